// Drives the OHIF viewer in headless Chromium for test_ohif.py, as a person would: the study list, then each
// study in turn. One browser, one page. The job is JSON in argv[2]:
//   {"base": "https://host:port", "chromium": "/usr/bin/chromium", "shots": "/dir", "timeoutMs": 120000,
//    "studies": [{"name": "ct", "uid": "1.2.3"}]}
// It prints one JSON line for the study list and one per study; playwright-core comes from NODE_PATH.
'use strict';
const { chromium } = require('playwright-core');

const job = JSON.parse(process.argv[2]);

// Standard deviation of the viewport canvas' luminance: 0 while nothing is drawn.
function canvasSpread() {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width || !canvas.height) {
    return 0;
  }
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let sum = 0;
  let squares = 0;
  const step = 4 * 7;
  let n = 0;
  for (let i = 0; i < data.length; i += step) {
    const value = (data[i] + data[i + 1] + data[i + 2]) / 3;
    sum += value;
    squares += value * value;
    n += 1;
  }
  const mean = sum / n;
  return Math.sqrt(Math.max(0, squares / n - mean * mean));
}

async function main() {
  const browser = await chromium.launch({
    executablePath: job.chromium,
    headless: true,
    // No GPU here: WebGL on SwiftShader, as Cornerstone3D needs WebGL.
    args: ['--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--no-sandbox'],
  });
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
  const dismiss = page.getByRole('button', { name: 'Confirm and hide' });
  if (await dismiss.isVisible()) {
    await dismiss.click();
  }
  await page.screenshot({ path: `${job.shots}/study-list.png` });
  console.log(JSON.stringify({ kind: 'list', listed, text: await page.innerText('body'), errors, refused }));

  for (const study of job.studies) {
    errors = [];
    refused = [];
    frames = 0;
    current = study.uid;
    await page.goto(`${job.base}/viewer/viewer?StudyInstanceUIDs=${study.uid}`);
    let spread = 0;
    try {
      await page.waitForFunction(canvasSpread, null, { timeout: job.timeoutMs, polling: 500 });
      spread = await page.evaluate(canvasSpread);
    } catch (error) {
      errors.push(`no image drawn: ${error.message.split('\n')[0]}`);
    }
    const shot = `${job.shots}/${study.name}.png`;
    const canvas = page.locator('canvas.cornerstone-canvas').first();
    await ((await canvas.count()) ? canvas.screenshot({ path: shot }) : page.screenshot({ path: shot }));
    console.log(JSON.stringify({ kind: 'study', name: study.name, uid: study.uid, spread, frames, shot, errors, refused }));
  }
  await browser.close();
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
