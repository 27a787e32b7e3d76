// Drives the OHIF viewer in headless Chromium for test_ohif.py, as a person would: the study list, then each
// study in turn. One browser, one page. The job is JSON in argv[2]:
//   {"base": "https://host:port", "chromium": "/usr/bin/chromium", "shots": "/dir", "timeoutMs": 120000,
//    "studies": [{"name": "ct", "uid": "1.2.3"}]}
// It prints one JSON line for the study list, one per study and one of the requests that went elsewhere than
// /viewer/ and /dicom-web/; playwright-core comes from NODE_PATH.
'use strict';
const { dismissBanner, drawnSpread, launch } = require('./browser.cjs');

const job = JSON.parse(process.argv[2]);

async function main() {
  const browser = await launch(job.chromium);
  const page = await browser.newPage({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  let errors = [];
  page.on('console', message => {
    if (message.type() === 'error') {
      errors.push(message.text());
    }
  });
  page.on('pageerror', error => errors.push(`${error.name}: ${error.message}`));
  // Requests the archive refused or failed: what the viewer asks for that we do not serve.
  // Frames fetched for the study on screen: the image drawn is this study's, from the archive.
  // Requests over the network for anything but the viewer's own files and the archive's DICOMweb (blob: and
  // data: URLs are the page's own memory): none may reach a wado-server.
  const strays = [];
  page.on('request', request => {
    const { pathname, protocol } = new URL(request.url());
    const network = protocol === 'http:' || protocol === 'https:';
    if (network && !pathname.startsWith('/viewer/') && !pathname.startsWith('/dicom-web/')) {
      strays.push(`${request.method()} ${request.url()}`);
    }
  });
  let refused = [];
  let frames = 0;
  let current = '';
  page.on('response', response => {
    const url = response.url();
    if (response.status() >= 400 && url.includes('/dicom-web/')) {
      refused.push(`${response.status()} ${response.request().method()} ${url}`);
    } else if (current && url.includes(`/studies/${current}/`) && url.includes('/frames/')) {
      frames += 1;
    }
  });

  await page.goto(`${job.base}/viewer/`);
  const total = new RegExp(`\\bof ${job.studies.length}\\b`);
  const listed = await page
    .getByText(total)
    .first()
    .waitFor({ timeout: job.timeoutMs })
    .then(() => true, () => false);
  await dismissBanner(page);
  await page.screenshot({ path: `${job.shots}/study-list.png` });
  console.log(JSON.stringify({ kind: 'list', listed, text: await page.innerText('body'), errors, refused }));

  for (const study of job.studies) {
    errors = [];
    refused = [];
    frames = 0;
    current = study.uid;
    await page.goto(`${job.base}/viewer/viewer?StudyInstanceUIDs=${study.uid}`);
    const spread = await drawnSpread(page, job.timeoutMs, errors);
    const shot = `${job.shots}/${study.name}.png`;
    const canvas = page.locator('canvas.cornerstone-canvas').first();
    await ((await canvas.count()) ? canvas.screenshot({ path: shot }) : page.screenshot({ path: shot }));
    console.log(JSON.stringify({ kind: 'study', name: study.name, uid: study.uid, spread, frames, shot, errors, refused }));
  }
  console.log(JSON.stringify({ kind: 'strays', strays }));
  await browser.close();
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
