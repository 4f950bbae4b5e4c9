"""Publish one broadcast job, then wait for its receipt (pip install pika)."""
import json, os, sys, time, uuid

import pika

url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
queue = os.environ.get("BROADCAST_QUEUE", "broadcast.jobs")
text = os.environ.get("BROADCAST_TEXT", "Match starts in 5 minutes")
timeout = float(os.environ.get("RECEIPT_TIMEOUT_SECS", "60"))

with pika.BlockingConnection(pika.URLParameters(url)) as connection:
    channel = connection.channel()
    channel.confirm_delivery()  # basic_publish raises unless the broker took it
    reply_to = channel.queue_declare("", exclusive=True).method.queue
    message_id = uuid.uuid4().hex
    body = {"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]}
    channel.basic_publish("", queue, json.dumps(body).encode(), pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        message_id=message_id,
        correlation_id=uuid.uuid4().hex,
        reply_to=reply_to,
        headers={"x-deadline": int(time.time() * 1000) + 60_000},  # unix ms
    ), mandatory=True)  # no such queue: pika.exceptions.UnroutableError
    deadline = time.monotonic() + timeout
    replies = channel.consume(reply_to, auto_ack=True, inactivity_timeout=1)
    for method, _, data in replies:
        receipt = json.loads(data) if method else {}
        if receipt.get("message_id") == message_id:
            print(json.dumps(receipt))  # "outcome": "delivered", "MsgSeq": ...
            break
        if time.monotonic() > deadline:
            sys.exit(f"no receipt for {message_id} within {timeout:g} s")
