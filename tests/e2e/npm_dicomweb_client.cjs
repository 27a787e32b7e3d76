// Makes one call of the `dicomweb-client` npm package (the DICOMweb client OHIF is built on) for
// test_npm_dicomweb_client.py, with xhr2 standing in for the browser's XMLHttpRequest. The job is JSON in argv[2]:
//   {"url": "http://host:port/dicom-web", "client": {more client options, e.g. singlepart},
//    "method": "storeInstances", "options": {...}, "files": ["/a.dcm"], "out": "/dir"}
// The files become options.datasets, as ArrayBuffers. It prints one JSON line: {"ok": whether the call resolved,
// "json" for a JSON answer, "text" for a text one, "parts": [files in `out` holding each binary part, in order];
// for a failure "status" and the answer's "text"}. dicomweb-client and xhr2 come from NODE_PATH.
'use strict';
const fs = require('fs');
const path = require('path');

global.XMLHttpRequest = require('xhr2');
const { api } = require('dicomweb-client');

const job = JSON.parse(process.argv[2]);

function arrayBuffer(file) {
  const bytes = fs.readFileSync(file);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

// What the call resolved to, as the report's fields: binary parts are written to files.
function describe(result) {
  const parts = Array.isArray(result) ? result : [result];
  if (parts.length > 0 && parts.every(part => part instanceof ArrayBuffer)) {
    return {
      parts: parts.map((part, index) => {
        const file = path.join(job.out, `part.${index}`);
        fs.writeFileSync(file, Buffer.from(part));
        return file;
      }),
    };
  }
  return typeof result === 'string' ? { text: result } : { json: result };
}

async function main() {
  const client = new api.DICOMwebClient({ url: job.url, verbose: false, ...job.client });
  const options = { ...job.options };
  if (job.files) {
    options.datasets = job.files.map(arrayBuffer);
  }
  let report;
  try {
    report = { ok: true, ...describe(await client[job.method](options)) };
  } catch (error) {
    report = { ok: false, status: error.status || 0, error: String(error.message), text: String(error.response || '') };
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch(error => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
