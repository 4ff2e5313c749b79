"""The collector's OpenAPI description (hand-written: the API is small and the contract is shared)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_spec"]

_DEC = {"type": "string", "pattern": r"^\d+(\.\d+)?$", "description": "a decimal string"}
_PLAN = {
    "name": "plan",
    "in": "query",
    "required": False,
    "description": "the plan whose list prices apply (default ship)",
    "schema": {"type": "string", "enum": ["build", "ship", "scale"]},
}
_ERROR = {
    "description": "an error; the message says what is wrong and what to do",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_TIME_PARAM = {"schema": {"type": "string"}, "description": "RFC 3339 time or YYYY-MM-DD (UTC)"}


def _q(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def openapi_spec() -> dict[str, Any]:
    record = {
        "type": "object",
        "required": ["id", "session_id", "resource", "raw", "unit", "quantity", "policy", "start", "end"],
        "properties": {
            "id": {"type": "string", "maxLength": 256},
            "session_id": {"type": "string", "maxLength": 256},
            "room": {"type": "string"},
            "room_sid": {"type": "string"},
            "agent_name": {"type": "string"},
            "worker_id": {"type": "string"},
            "customer": {"type": "string"},
            "resource": {"type": "string"},
            "raw": {"type": "integer", "minimum": 0},
            "unit": {
                "type": "string",
                "enum": ["minute", "second", "gb", "token", "character", "event", "number_month"],
            },
            "quantity": _DEC,
            "policy": {"type": "string"},
            "model": {"type": "string"},
            "provider": {"type": "string"},
            "language": {"type": "string"},
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": ["ok", "cancelled", "error", "estimated", "checkpoint"]},
            "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
            "meta": {"type": "object"},
        },
        "additionalProperties": False,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "livekit-metering collector",
            "version": "1",
            "description": "Receives, stores, reconciles and answers LiveKit Agents meter records. "
            "Every request is signed with a LiveKit access token (JWT) from an API key the collector knows; "
            "the key decides the project all reads and writes are scoped to. Tokens are valid for at most "
            "10 minutes from their nbf (serve --max-token-minutes). A write token carries the sha256 of the "
            "one body it signs (POST /v1/records, webhooks) and is refused for anything else; a read token "
            "has no sha256 claim (queries, dashboard sign-in). The dashboard's session cookie also signs queries.",
        },
        "components": {
            "securitySchemes": {
                "livekitJwt": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "a livekit-api AccessToken(key, secret) JWT (optionally 'Bearer '), valid for "
                    "at most 10 minutes; on POST /v1/records its sha256 claim is the base64 SHA-256 of the body "
                    "bytes as sent, on queries it has none",
                },
                "dashboardSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "livekit_metering_session",
                    "description": "set by POST /dashboard/session (HttpOnly, SameSite=Strict)",
                },
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "MeterRecord": record,
                "Result": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"type": "string", "enum": ["accepted", "duplicate", "conflict", "rejected"]},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"livekitJwt": []}, {"dashboardSession": []}],
        "paths": {
            "/v1/records": {
                "post": {
                    "summary": "Ingest a batch of meter records (answered after a durable commit)",
                    "parameters": [
                        {
                            "name": "Content-Encoding",
                            "in": "header",
                            "schema": {"type": "string", "enum": ["gzip", "identity"]},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["records"],
                                    "properties": {
                                        "records": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/MeterRecord"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "one result per record, in batch order",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "results": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Result"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                        "408": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/v1/livekit/webhook": {
                "post": {
                    "summary": "LiveKit webhooks (closing events end crashed sessions)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/webhook+json": {"schema": {"type": "object"}}},
                    },
                    "responses": {"200": {"description": "processed (or a redelivery)"}, "401": _ERROR},
                }
            },
            "/v1/sessions": {
                "get": {
                    "summary": "Sessions, newest first",
                    "parameters": [
                        {**_q("since", "sessions ending at or after"), **_TIME_PARAM},
                        {**_q("until", "sessions starting before"), **_TIME_PARAM},
                        _q("room", "room name"),
                        _q("agent", "agent name"),
                        _q("customer", "customer"),
                        _q("limit", "at most this many (1-1000, default 100)", type="integer"),
                        _PLAN,
                    ],
                    "responses": {
                        "200": {
                            "description": '{"sessions": [...]}: each with "cost" (the priced part, a decimal '
                            'string) and "unpriced" (the usage without a price, by name)'
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                    },
                }
            },
            "/v1/sessions/{session_id}/records": {
                "get": {
                    "summary": "A session's records, each with its cost",
                    "parameters": [
                        {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": '{"records": [...]}'}, "401": _ERROR},
                }
            },
            "/v1/usage": {
                "get": {
                    "summary": "Usage and cost, grouped (whole UTC days; default: month to date)",
                    "parameters": [
                        {**_q("since", "from (rounded down to the day)"), **_TIME_PARAM},
                        {**_q("until", "to (rounded up to the day)"), **_TIME_PARAM},
                        _q(
                            "group_by",
                            "grouping",
                            type="string",
                            enum=["day", "agent", "room", "model", "customer", "resource"],
                        ),
                        _PLAN,
                    ],
                    "responses": {
                        "200": {
                            "description": '{"group_by", "rows", "total", "unpriced"}: each row per (key, resource, '
                            'unit) with "quantity", "cost" (the priced part) and "unpriced" (names of the usage '
                            "without a price, never counted as $0)"
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                    },
                }
            },
            "/v1/invoice": {
                "get": {
                    "summary": "Invoice preview for a month and plan",
                    "parameters": [
                        _q("month", "YYYY-MM (default: this month)"),
                        _q("plan", "plan", type="string", enum=["build", "ship", "scale"]),
                    ],
                    "responses": {"200": {"description": "the invoice JSON"}, "400": _ERROR, "401": _ERROR},
                }
            },
            "/v1/quotas": {
                "get": {
                    "summary": "Plan quotas this month: used, included, remaining, and when the recent run-rate "
                    "uses each up (Build's are hard caps)",
                    "parameters": [
                        _q("month", "YYYY-MM (default: this month)"),
                        _q("plan", "plan (default: the project's)", type="string", enum=["build", "ship", "scale"]),
                        _q("days", "run-rate window in days, 1-31 (default 7)", type="integer"),
                    ],
                    "responses": {
                        "200": {"description": '{"month", "plan", "as_of", "hard_caps", "run_rate", "quotas": [...]}'},
                        "400": _ERROR,
                        "401": _ERROR,
                    },
                }
            },
            "/v1/forecast": {
                "get": {
                    "summary": "Month-end forecast of the invoice from month-to-date usage and the recent daily "
                    "run-rate, with its method",
                    "parameters": [
                        _q("month", "YYYY-MM (default: this month)"),
                        _q("plan", "plan (default: the project's)", type="string", enum=["build", "ship", "scale"]),
                        _q("days", "run-rate window in days, 1-31 (default 7)", type="integer"),
                    ],
                    "responses": {
                        "200": {
                            "description": '{"method", "method_text", "run_rate", "days_left", "month_to_date", '
                            '"total", "nothing_due", "invoice", "usage"}'
                        },
                        "400": _ERROR,
                        "401": _ERROR,
                    },
                }
            },
            "/v1/spend": {
                "get": {
                    "summary": "A customer's (or the project's) usage this month at the plan's list prices, "
                    "before included quotas and credits (what a customer budget is checked against)",
                    "parameters": [
                        _q("customer", "the records' customer (default: the whole project)"),
                        _q("exclude_session", "leave out this session's records (a running session adds its own)"),
                        _q("plan", "plan (default: the project's)", type="string", enum=["build", "ship", "scale"]),
                    ],
                    "responses": {
                        "200": {"description": '{"customer", "month", "plan", "as_of", "cost", "unpriced"}'},
                        "400": _ERROR,
                        "401": _ERROR,
                    },
                }
            },
            "/v1/invoices": {
                "get": {
                    "summary": "Issued invoices, newest first, and the months closed with nothing due",
                    "parameters": [],
                    "responses": {
                        "200": {"description": '{"invoices": [...], "closed_without_invoice": [...]}'},
                        "401": _ERROR,
                    },
                }
            },
            "/v1/invoices/{number}": {
                "get": {
                    "summary": "One issued invoice: the JSON exactly as issued, or CSV, or a printable HTML page",
                    "parameters": [
                        {"name": "number", "in": "path", "required": True, "schema": {"type": "string"}},
                        _q("format", "json (default), csv or html", type="string", enum=["json", "csv", "html"]),
                    ],
                    "responses": {"200": {"description": "the invoice"}, "400": _ERROR, "401": _ERROR, "404": _ERROR},
                }
            },
            "/v1/invoices/{number}/statements/{customer}": {
                "get": {
                    "summary": "A customer's statement issued with an invoice (list prices, and its adjustments)",
                    "parameters": [
                        {"name": "number", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "customer", "in": "path", "required": True, "schema": {"type": "string"}},
                        _q("format", "json (default), csv or html", type="string", enum=["json", "csv", "html"]),
                    ],
                    "responses": {"200": {"description": "the statement"}, "400": _ERROR, "401": _ERROR, "404": _ERROR},
                }
            },
            "/dashboard/session": {
                "post": {
                    "summary": "Dashboard sign-in: a read token for an HttpOnly session cookie",
                    "responses": {
                        "200": {"description": '{"project", "expires_in"} and Set-Cookie: livekit_metering_session'},
                        "401": _ERROR,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and store check",
                    "security": [],
                    "responses": {"200": {"description": '{"status": "ok", "pid": <the worker that answered>}'}},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text"}}}
            },
            "/openapi.json": {
                "get": {"summary": "This document", "security": [], "responses": {"200": {"description": "JSON"}}}
            },
        },
    }
