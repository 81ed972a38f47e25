// Validates ServiceMonitor documents against the prometheus-operator CRD
// schema shipped by @kubernetes-models/prometheus-operator (generated from
// the operator's CRDs). kubernetes-validate only knows built-in kinds, so
// CRD objects are checked here instead of being skipped.
// Usage: node validate-servicemonitor.mjs FILE...   (run from a directory
// whose node_modules holds @kubernetes-models/prometheus-operator and yaml;
// scripts/lint-deploy.sh sets NODE_PATH-free resolution by running it there)
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import YAML from "yaml";

let failed = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of YAML.parseAllDocuments(readFileSync(file, "utf8"))) {
    const obj = doc.toJS();
    if (!obj || obj.kind !== "ServiceMonitor") continue;
    checked += 1;
    try {
      new ServiceMonitor(obj).validate();
      console.log(`ok   ${file}: ServiceMonitor/${obj.metadata?.name}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${file}: ServiceMonitor/${obj.metadata?.name}: ${e.message}`);
    }
  }
}
if (checked === 0) {
  console.log("FAIL no ServiceMonitor found");
  process.exit(1);
}
process.exit(failed ? 1 : 0);
