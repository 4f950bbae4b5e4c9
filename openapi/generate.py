"""Writes openapi/ingest.json, the ingest endpoint's OpenAPI 3.1 document,
with schema/job.schema.json as its Job schema (its `$defs` references
pointed into the document). Run from the repository's root after changing
either; tests/ingest.rs checks the two agree."""
import json


def as_component(schema, at):
    """The job schema as a component at `at`: its own `$schema` and `$id`
    dropped, its `#/$defs/...` references pointed into the document."""
    if isinstance(schema, dict):
        return {
            k: (v.replace("#/$defs/", at + "/$defs/") if k == "$ref" else as_component(v, at))
            for k, v in schema.items()
            if k not in ("$schema", "$id")
        }
    if isinstance(schema, list):
        return [as_component(v, at) for v in schema]
    return schema


job = as_component(json.load(open("schema/job.schema.json")), "#/components/schemas/Job")
text_job = {"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "Match starts in 5 minutes"}}]}
error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}, "additionalProperties": False}
def err(desc, example):
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}, "example": {"error": example}}}}
retry = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}}
app_param = {"name": "sdkappid", "in": "path", "required": True, "description": "The app's SDKAppID", "schema": {"type": "integer", "minimum": 1, "maximum": 18446744073709551615}}
common = {
    "401": err("No bearer token, or not one of this endpoint's", "a bearer token is required (Authorization: Bearer ...)"),
    "403": err("The token may not publish for this app", "this token may not publish for app 1400000000"),
    "404": err("The app is not served here", "app 1400000001 is not served by this endpoint"),
    "429": {**err("The token's request limit: retry after Retry-After seconds", "too many requests for this token: retry after 1 s"), "headers": retry},
}
unavailable = {**err("The broker blocks publishers, cannot be reached or did not confirm, or the ledger cannot be reached: nothing was published", "the broker blocks publishers (a memory or disk alarm): nothing was published, retry later"), "headers": retry}
accepted = {"type": "object", "required": ["id", "sdkappid", "queue"], "properties": {
    "id": {"type": "string", "description": "The job's id (its message_id): the Idempotency-Key, or a random one"},
    "sdkappid": {"type": "integer"}, "queue": {"type": "string", "description": "The queue it was published to"}}}
doc = {
  "openapi": "3.1.0",
  "info": {"title": "broadcast-worker ingest", "version": "1.0.0",
           "description": "Producers publish broadcast jobs over HTTP. A job is the body of Tencent Cloud Chat's send_broadcast_msg; it is validated as the worker decodes it and published to the app's queue with publisher confirms. 202 means the broker confirmed it."},
  "servers": [{"url": "/"}],
  "security": [{"bearer": []}],
  "paths": {
    "/v1/apps/{sdkappid}/broadcasts": {"post": {
      "operationId": "postBroadcast", "summary": "Publish one job",
      "parameters": [app_param,
        {"name": "Idempotency-Key", "in": "header", "required": False, "description": "Becomes the job's message_id; a repeat within the ledger's retention is answered as the first, not published again", "schema": {"type": "string", "minLength": 1, "maxLength": 255}, "example": "order-42"},
        {"name": "X-Deadline", "in": "header", "required": False, "description": "Unix milliseconds, or seconds from now such as 30s: past it the job is dead-lettered as expired instead of sent late", "schema": {"type": "string", "pattern": "^([0-9]+|[0-9]+(\\.[0-9]+)?s)$"}, "example": "30s"},
        {"name": "X-Coalesce-Key", "in": "header", "required": False, "description": "A latest-wins key (needs an Idempotency-Key)", "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
        {"name": "X-Urgent", "in": "header", "required": False, "description": "true: the app's urgent lane", "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}],
      "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"},
          "examples": {"text": {"value": text_job},
                       "custom": {"value": {"From_Account": "system", "MsgBody": [{"MsgType": "TIMCustomElem", "MsgContent": {"Data": "{\"type\":\"score\",\"home\":2,\"away\":1}", "Desc": "score"}}], "CloudCustomData": "match:42"}}}}}},
      "responses": {
        "202": {"description": "Published and confirmed by the broker", "headers": {"Idempotent-Replayed": {"description": "true when the key's job was published before (not published again)", "schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}, "example": {"id": "order-42", "sdkappid": 1400000000, "queue": "broadcast.jobs"}}}},
        "400": err("Not a job the worker takes, or a header it cannot read: one message, nothing published", "MsgBody[0]: TIMTextElem needs MsgContent.Text"),
        "413": err("Larger than any call can be", "a call of this job alone is 13112 bytes, over 12000"),
        "422": err("The Idempotency-Key was used before for another job", "Idempotency-Key \"order-42\" was used before with another body"),
        "503": unavailable, **common}}},
    "/v1/apps/{sdkappid}/broadcasts:batch": {"post": {
      "operationId": "postBroadcastBatch", "summary": "Publish up to 1,000 jobs, one result each",
      "parameters": [app_param],
      "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"},
          "examples": {"two": {"value": {"jobs": [{"job": text_job, "idempotency_key": "order-43"}, {"job": text_job, "urgent": True, "deadline_ms": 4102444800000}]}}}}}},
      "responses": {
        "200": {"description": "One result per job, in order: 202 published, or why not", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResults"}}}},
        "400": err("Not a batch as documented, or not 1 to 1,000 jobs", "a batch holds 1 to 1000 jobs, found 0"),
        "413": err("The batch body is over 16 MiB", "length limit exceeded"),
        **common}}},
    "/v1/apps/{sdkappid}/broadcasts/{id}": {"get": {
      "operationId": "getBroadcast", "summary": "What the ledger knows of a job (as `jobs show`)",
      "parameters": [app_param, {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}],
      "responses": {
        "200": {"description": "The job's record", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobReport"}}}},
        "400": err("The SDKAppID is not a number", "\"x\" is not an SDKAppID"),
        "501": err("This endpoint has no ledger", "this endpoint has no ledger (DATABASE_URL): it cannot say what became of a job"),
        "503": unavailable,
        **{**common, "404": err("The app is not served here, or the ledger has no record of the job (not yet in a call, never published, or pruned)", "the ledger has no record of \"order-42\": not yet in a call (waiting in the queue), never published, or pruned")}}}},
    "/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
      "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/v1/job.schema.json": {"get": {"operationId": "jobSchema", "summary": "The job body's JSON Schema (2020-12), schema/job.schema.json", "security": [],
      "responses": {"200": {"description": "The JSON Schema of a job body", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
  },
  "components": {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token of the tokens file, for this app or for all"}},
    "schemas": {
      "Job": job,
      "Error": error,
      "Accepted": accepted,
      "Batch": {"type": "object", "required": ["jobs"], "additionalProperties": False, "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {
          "type": "object", "required": ["job"], "additionalProperties": False, "properties": {
            "job": {"$ref": "#/components/schemas/Job"},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255},
            "deadline_ms": {"type": "integer", "minimum": 0, "description": "Unix milliseconds"},
            "coalesce_key": {"type": "string", "minLength": 1, "maxLength": 255},
            "urgent": {"type": "boolean"}}}}}},
      "BatchResults": {"type": "object", "required": ["results"], "properties": {"results": {"type": "array", "items": {"type": "object", "required": ["index", "status"], "properties": {
          "index": {"type": "integer"}, "status": {"type": "integer", "description": "202, or the status a single POST would have answered"},
          "id": {"type": "string"}, "sdkappid": {"type": "integer"}, "queue": {"type": "string"}, "repeated": {"type": "boolean"}, "error": {"type": "string"}}}}}},
      "JobReport": {"type": "object", "required": ["job_id", "state"], "properties": {
          "app": {"type": "integer"}, "queue": {"type": "string"}, "job_id": {"type": "string"},
          "state": {"type": "string", "enum": ["in_flight", "delivered", "dead_lettered", "superseded"]},
          "reason": {"type": ["string", "null"]}, "error_code": {"type": ["integer", "null"]}, "error_info": {"type": ["string", "null"]},
          "updated_at_ms": {"type": "integer"}, "call_id": {"type": ["integer", "null"]}, "call_state": {"type": ["string", "null"]},
          "msg_seq": {"type": ["integer", "null"]}, "call_jobs": {"type": ["integer", "null"]}, "call_started_ms": {"type": ["integer", "null"]},
          "superseded_by": {"type": ["string", "null"]}}}
    }
  }
}
json.dump(doc, open("openapi/ingest.json", "w"), indent=2)
open("openapi/ingest.json", "a").write("\n")
