// What the browser drivers (ohif_viewer.cjs, viewer_home.cjs) share: Debian's chromium through playwright-core
// (from NODE_PATH), and how to tell that a Cornerstone viewport has drawn an image.
'use strict';
const { chromium } = require('playwright-core');

// Standard deviation of the viewport canvas' luminance: 0 while nothing is drawn. Runs in the page.
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

// One headless browser; extra arguments (e.g. --host-resolver-rules) come after the WebGL ones.
function launch(executablePath, extraArgs = []) {
  return chromium.launch({
    executablePath,
    headless: true,
    // No GPU here: WebGL on SwiftShader, as Cornerstone3D needs WebGL.
    args: ['--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--no-sandbox', ...extraArgs],
  });
}

// Waits until the viewport shows an image; its spread, or 0 and the reason in `errors` when none came.
async function drawnSpread(page, timeoutMs, errors) {
  try {
    await page.waitForFunction(canvasSpread, null, { timeout: timeoutMs, polling: 500 });
    return await page.evaluate(canvasSpread);
  } catch (error) {
    errors.push(`no image drawn: ${error.message.split('\n')[0]}`);
    return 0;
  }
}

// Dismisses OHIF's "investigational use" banner when it is shown.
async function dismissBanner(page) {
  const dismiss = page.getByRole('button', { name: 'Confirm and hide' });
  if (await dismiss.isVisible()) {
    await dismiss.click();
  }
}

module.exports = { canvasSpread, drawnSpread, dismissBanner, launch };
