// How docs/prefect-generation.png was captured: a page of a real Prefect server's UI in headless
// Chromium (README "Watching it"). Setup: `npm install puppeteer-core@22 @sparticuz/chromium@123`
// (a Chromium build that ships inside the npm package), then `node docs/prefect-ui.js URL OUT.png`.
const chromium = require('@sparticuz/chromium');
const puppeteer = require('puppeteer-core');

(async () => {
  const [url, out] = process.argv.slice(2);
  const browser = await puppeteer.launch({args: chromium.args, executablePath: await chromium.executablePath(),
                                          headless: true, defaultViewport: {width: 1440, height: 900}});
  const page = await browser.newPage();
  await page.goto(url, {waitUntil: 'networkidle0', timeout: 60000});  // the app, then its API calls
  await new Promise(resolve => setTimeout(resolve, 3000));  // the run graph is drawn after the data arrives
  await page.screenshot({path: out});
  await browser.close();
})().catch(err => { console.error(err); process.exit(1); });
