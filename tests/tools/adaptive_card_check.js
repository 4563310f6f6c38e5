// Parses an Adaptive Card (stdin, JSON) with Microsoft's own `adaptivecards` library and prints what it
// reported: parse events (unknown element types, invalid property values) and validation failures.
// Needs NODE_PATH to hold a node_modules with adaptivecards (tests/channels/test_hostile_values.py).
const AC = require("adaptivecards/dist/adaptivecards.js");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const card = new AC.AdaptiveCard();
const context = new AC.SerializationContext();
card.parse(input, context);
const problems = [];
for (let i = 0; i < context.eventCount; i++) problems.push(context.getEventAt(i).message);
for (const event of card.validateProperties().validationEvents) problems.push(event.message);
console.log(JSON.stringify({ version: card.version ? card.version.toString() : null, problems }));
