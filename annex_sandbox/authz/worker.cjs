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
const { runSimulation } = require('@cloud-copilot/iam-simulate');

async function decide(simulation) {
  try {
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
