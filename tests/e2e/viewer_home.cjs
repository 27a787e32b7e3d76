// Drives the archive's own home page and OHIF viewer (`dicomcloud up`, no Nginx) in headless Chromium for
// test_viewer_home.py, as a person would. One browser, one page; the job is JSON in argv[2]:
//   {"base": "http://127.0.0.1:port", "chromium": "/usr/bin/chromium", "shots": "/dir", "timeoutMs": 120000,
//    "steps": [{"do": "home"}, {"do": "upload", "files": ["/a.dcm"], "expect": "Patient^Name"},
//              {"do": "open", "uid": "1.2.3", "token": "optional"}, {"do": "zip", "uid": "1.2.3", "to": "/x.zip"},
//              {"do": "delete", "uid": "1.2.3"}, {"do": "docs"}],
//    "args": ["--host-resolver-rules=..."]}
// It prints one JSON line per step (its "do", what it saw, console errors, refused DICOMweb requests and
// requests that left the archive's host); playwright-core comes from NODE_PATH.
'use strict';
const { dismissBanner, drawnSpread, launch } = require('./browser.cjs');

const job = JSON.parse(process.argv[2]);

async function main() {
  const browser = await launch(job.chromium, job.args || []);
  const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  let errors = [];
  let refused = [];
  let frames = 0;
  let stored = [];
  let elsewhere = [];
  const archiveHost = new URL(job.base).host;
  page.on('request', request => {
    const url = new URL(request.url());
    if (url.protocol !== 'data:' && url.protocol !== 'blob:' && url.host !== archiveHost) {
      elsewhere.push(request.url());
    }
  });
  page.on('console', message => {
    if (message.type() === 'error') {
      errors.push(message.text());
    }
  });
  page.on('pageerror', error => errors.push(`${error.name}: ${error.message}`));
  page.on('dialog', dialog => dialog.accept());
  page.on('response', response => {
    const url = response.url();
    const method = response.request().method();
    if (response.status() >= 400 && url.includes('/dicom-web/')) {
      refused.push(`${response.status()} ${method} ${url}`);
    } else if (url.includes('/frames/')) {
      frames += 1;
    }
    if (method === 'POST' && /\/dicom-web\/studies$/.test(new URL(url).pathname)) {
      stored.push(response.status());
    }
  });

  const steps = {
    // The home page, then its one link to the viewer's study list (through the viewer's sign-in when it has one).
    async home(step) {
      await page.goto(`${job.base}/`);
      await page.waitForSelector('body[data-ready]', { timeout: job.timeoutMs });
      await page.click('#study-list');
      const upload = page.getByRole('button', { name: 'Upload' });
      const reached = await upload.waitFor({ timeout: step.timeoutMs || job.timeoutMs }).then(() => true, () => false);
      await dismissBanner(page);
      await page.screenshot({ path: `${job.shots}/study-list.png` });
      return { reached, url: page.url(), text: await page.innerText('body') };
    },
    // The study list's Upload: files through the viewer's own STOW-RS, then the list shows the study.
    async upload(step) {
      await page.goto(`${job.base}/viewer/`);
      await dismissBanner(page);
      await page.getByRole('button', { name: 'Upload' }).click();
      await page.locator('input[type=file]').first().setInputFiles(step.files);
      const deadline = Date.now() + job.timeoutMs;
      while (stored.length < step.files.length && Date.now() < deadline) {
        await page.waitForTimeout(250);
      }
      await page.screenshot({ path: `${job.shots}/upload.png` });
      await page.goto(`${job.base}/viewer/`);
      const listed = await page
        .getByText(step.expect)
        .first()
        .waitFor({ timeout: job.timeoutMs })
        .then(() => true, () => false);
      return { stored, listed, text: await page.innerText('body') };
    },
    // A study opened in the viewer, with the token handed to it in its URL when there is one.
    async open(step) {
      const token = step.token ? `&token=${encodeURIComponent(step.token)}` : '';
      await page.goto(`${job.base}/viewer/viewer?StudyInstanceUIDs=${step.uid}${token}`);
      const spread = await drawnSpread(page, step.timeoutMs || job.timeoutMs, errors);
      const shot = `${job.shots}/open-${step.uid}${step.token ? '-token' : ''}.png`;
      await page.screenshot({ path: shot });
      return { spread, frames, shot };
    },
    // The home page's ZIP link of a study, saved where the test reads it.
    async zip(step) {
      await page.goto(`${job.base}/`);
      await page.waitForSelector('body[data-ready]', { timeout: job.timeoutMs });
      const [download] = await Promise.all([
        page.waitForEvent('download', { timeout: job.timeoutMs }),
        page.click(`tr[data-uid="${step.uid}"] a.zip`),
      ]);
      await download.saveAs(step.to);
      return { name: download.suggestedFilename(), failure: await download.failure() };
    },
    // The home page's Delete of a study (the confirmation accepted); its row leaves the list. A `token` is
    // handed to the page in its fragment, as a person's link would.
    async delete(step) {
      await page.goto('about:blank'); // a new fragment on the same page would not load it again
      await page.goto(`${job.base}/${step.token ? `#token=${encodeURIComponent(step.token)}` : ''}`);
      await page.waitForSelector('body[data-ready]', { timeout: job.timeoutMs });
      const row = page.locator(`tr[data-uid="${step.uid}"]`);
      const listed = (await row.count()) > 0;
      const offered = listed && (await row.locator('button.delete').count()) > 0;
      let gone = false;
      if (offered) {
        await row.locator('button.delete').click();
        gone = await row.waitFor({ state: 'detached', timeout: job.timeoutMs }).then(() => true, () => false);
      }
      return { listed, offered, gone, error: await page.innerText('#error') };
    },
    // The API docs: Swagger UI drawn from the archive's own files, the API's title on the page.
    async docs() {
      await page.goto(`${job.base}/docs`);
      const title = page.locator('.swagger-ui .info .title');
      const drawn = await title.waitFor({ timeout: job.timeoutMs }).then(() => true, () => false);
      const operations = await page.locator('.swagger-ui .opblock').count();
      await page.screenshot({ path: `${job.shots}/docs.png` });
      return { drawn, title: drawn ? await title.innerText() : '', operations };
    },
  };

  for (const step of job.steps) {
    errors = [];
    refused = [];
    frames = 0;
    stored = [];
    elsewhere = [];
    const seen = await steps[step.do](step);
    console.log(JSON.stringify({ do: step.do, ...seen, errors, refused, elsewhere }));
  }
  await browser.close();
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
