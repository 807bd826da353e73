// Validate a .glb with the Khronos glTF validator; prints its JSON report.
// usage: node validate_gltf.js <path to gltf-validator package> <file.glb>
const fs = require("fs");
const validator = require(process.argv[2]);
const bytes = new Uint8Array(fs.readFileSync(process.argv[3]));
validator
  .validateBytes(bytes, { uri: process.argv[3] })
  .then((report) => console.log(JSON.stringify(report)))
  .catch((error) => {
    console.error(String(error));
    process.exit(2);
  });
