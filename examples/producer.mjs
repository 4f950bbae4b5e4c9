// Publish one broadcast job, then wait for its receipt (npm install amqplib).
import { randomUUID } from "node:crypto";
import amqp from "amqplib";

const env = process.env;
const url = env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const queue = env.BROADCAST_QUEUE ?? "broadcast.jobs";
const text = env.BROADCAST_TEXT ?? "Match starts in 5 minutes";
const timeoutSecs = Number(env.RECEIPT_TIMEOUT_SECS ?? 60);

const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel();
const { queue: replyTo } = await channel.assertQueue("", { exclusive: true });
const messageId = randomUUID();
const receipt = new Promise((resolve) => {
  channel.consume(replyTo, (msg) => {
    const got = msg && JSON.parse(msg.content.toString());
    if (got?.message_id === messageId) resolve(got);
  }, { noAck: true });
  setTimeout(resolve, timeoutSecs * 1000, null).unref();
});
let unroutable = false;
channel.on("return", () => { unroutable = true; }); // mandatory: no such queue
const body = { MsgBody: [{ MsgType: "TIMTextElem", MsgContent: { Text: text } }] };
channel.publish("", queue, Buffer.from(JSON.stringify(body)), {
  persistent: true,
  contentType: "application/json",
  messageId,
  correlationId: randomUUID(),
  replyTo,
  headers: { "x-deadline": Date.now() + 60_000 }, // unix ms, an integer
  mandatory: true,
});
await channel.waitForConfirms(); // throws if the broker refused it
const got = unroutable ? null : await receipt;
if (got) console.log(JSON.stringify(got)); // "outcome": "delivered", "MsgSeq": ...
else if (unroutable) console.error(`no queue ${queue}`);
else console.error(`no receipt for ${messageId} within ${timeoutSecs} s`);
await connection.close();
process.exitCode = got ? 0 : 1;
