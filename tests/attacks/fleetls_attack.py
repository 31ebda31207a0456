#!/usr/bin/env python3
"""fleetls_attack: a hostile second AMQP client for the fleetls security tests.

The Rust integration tests in tests/tests/security.rs run this script to attack
a fleetls parent and its children *from outside*: it forges, signs, captures,
replays and tampers with fleetls protocol v1 messages and probes the broker's
permissions, the way an intruder holding some broker credentials would.

It is deliberately NOT fleetls code: it shares no source with the Rust crates
and speaks the wire format from its written description only (MessagePack
envelope, Ed25519 signature headers, the fleetls.* exchanges and queues), so a
bug in fleetls' own encoder or verifier cannot hide itself from the tests.

Every subcommand prints exactly one JSON object on stdout and exits 0 when it
did what it was asked (a broker *refusal* is a success for the subcommands
that probe permissions: they print {"refused": true, ...}); otherwise it
prints an error on stderr and exits 1. Every network wait is bounded.

Requires Python 3.11 and the packages of requirements.txt beside this file
(pika, msgpack, cryptography). Run `fleetls_attack.py -h` or
`fleetls_attack.py SUBCOMMAND -h` for the options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import signal
import ssl
import sys
import time
import uuid
from typing import Any, NoReturn

PROG = "fleetls_attack"

try:
    import msgpack
    import pika
    import pika.exceptions as pika_errors
    from pika.adapters.utils.connection_workflow import (
        AMQPConnectorException,
        AMQPConnectorStackTimeout,
        AMQPConnectionWorkflowFailed,
    )
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
except ImportError as _missing:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"{PROG}: error: missing Python module {_missing.name!r}: "
        "run `pip install -r tests/attacks/requirements.txt`\n"
    )
    sys.exit(1)

# ----------------------------------------------------------------- the protocol

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/msgpack"
SIG_CONTEXT = b"fleetls-envelope-v1\x00"
KEY_HEADER = "x-fleetls-key"
SIG_HEADER = "x-fleetls-sig"
REASON_HEADER = "x-fleetls-reason"
AGENTS_EXCHANGE = "fleetls.agents"
PARENT_EXCHANGE = "fleetls.parent"
DEAD_QUEUE = "fleetls.dead"

CHILD_TO_PARENT = frozenset(
    ["Hello", "Heartbeat", "Csr", "StepReport", "SwitchReport", "BrokerSwitchReport", "Refused"]
)
PARENT_TO_CHILD = frozenset(
    [
        "CertificatesReady",
        "CertificateIssued",
        "CsrRejected",
        "RunStep",
        "UseSsl",
        "UseBrokerTls",
        "CrlUpdated",
    ]
)

# Top-level envelope keys, in the order the encoder writes them.
ENVELOPE_ORDER = ("v", "id", "re", "to", "from", "at", "seq", "body")
# Keys whose UUID-looking string values are encoded as bin16 without being asked.
UUID_KEYS_FIELDS = frozenset(["campaign", "command"])
UUID_KEYS_ENVELOPE = frozenset(["id", "re", "to", "from"])

NIL_UUID = uuid.UUID(int=0)
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

# AMQP reply codes that count as a permission refusal.
ACCESS_REFUSED = 403
RESOURCE_LOCKED = 405


class Fail(Exception):
    """An error to report on stderr (exit 1)."""


def now_ms() -> int:
    return int(time.time() * 1000)


_last_seq = 0


def next_seq() -> int:
    """A sender's replay counter as a child keeps it: microseconds since the
    epoch, strictly above the last one this process gave."""
    global _last_seq
    _last_seq = max(time.time_ns() // 1000, _last_seq + 1)
    return _last_seq


def looks_like_uuid(value: Any) -> bool:
    return isinstance(value, str) and bool(UUID_RE.match(value))


def parse_uuid_arg(text: str, what: str) -> uuid.UUID:
    """A UUID given on the command line; `nil` is the all-zero UUID."""
    if text.strip().lower() == "nil":
        return NIL_UUID
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise Fail(f"{what}: {text!r} is not a UUID (or `nil`)") from None


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Fail(f"{what}: not valid JSON ({e}): {text!r}") from None


def parse_hex_arg(text: str, what: str) -> bytes:
    """Hex bytes, or `@FILE` for hex kept in a file (a payload too big for
    one command-line argument)."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="ascii") as f:
                text = f.read()
        except OSError as e:
            raise Fail(f"{what}: cannot read {text[1:]}: {e}") from None
    cleaned = "".join(text.split())
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise Fail(f"{what}: not hexadecimal bytes") from None


def split_names(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset()
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def uuidify(obj: Any, keys: frozenset[str]) -> Any:
    """Copies a JSON value, turning UUID-looking strings under `keys` into bin16."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in keys and looks_like_uuid(value):
                out[key] = uuid.UUID(value).bytes
            else:
                out[key] = uuidify(value, keys)
        return out
    if isinstance(obj, list):
        return [uuidify(item, keys) for item in obj]
    return obj


def build_envelope(
    kind: str,
    fields: Any,
    *,
    msg_id: uuid.UUID,
    sender: uuid.UUID,
    at: int,
    re_id: uuid.UUID | None = None,
    to: uuid.UUID | None = None,
    version: int = PROTOCOL_VERSION,
    seq: int = 0,
) -> dict:
    """An envelope as a dict whose insertion order is the wire order; `seq`
    (the sender's replay counter) is written only when not 0."""
    envelope: dict[str, Any] = {"v": version, "id": msg_id.bytes}
    if re_id is not None:
        envelope["re"] = re_id.bytes
    if to is not None:
        envelope["to"] = to.bytes
    envelope["from"] = sender.bytes
    envelope["at"] = at
    if seq:
        envelope["seq"] = seq
    envelope["body"] = {kind: fields}
    return envelope


def encode(envelope: Any) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True, unicode_errors="surrogateescape")


def decode(payload: bytes) -> Any:
    """MessagePack → Python; invalid UTF-8 survives a re-encode unchanged."""
    return msgpack.unpackb(
        payload,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogateescape",
    )


def as_uuid(value: Any) -> uuid.UUID | None:
    """A UUID decoded from bin16 or a string, else None."""
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


def body_kind(envelope: Any) -> str | None:
    """The kind name of a decoded envelope whose body is a one-entry map."""
    if isinstance(envelope, dict):
        body = envelope.get("body")
        if isinstance(body, dict) and len(body) == 1:
            kind = next(iter(body))
            if isinstance(kind, str):
                return kind
    return None


def clean_str(text: str) -> str:
    """A string that is valid UTF-8 (lone surrogates from bad input replaced)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def to_jsonable(obj: Any) -> Any:
    """Decoded MessagePack → JSON: bin16 as a hyphenated UUID, other bytes as hex."""
    if isinstance(obj, (bytes, bytearray)):
        return str(uuid.UUID(bytes=bytes(obj))) if len(obj) == 16 else bytes(obj).hex()
    if isinstance(obj, str):
        return clean_str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {
            (clean_str(k) if isinstance(k, str) else json.dumps(to_jsonable(k))): to_jsonable(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(item) for item in obj]
    if isinstance(obj, msgpack.Timestamp):
        return {"timestamp_ns": obj.to_unix_nano()}
    if isinstance(obj, msgpack.ExtType):
        return {"ext": obj.code, "data": obj.data.hex()}
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return str(obj)


def decode_for_report(payload: bytes) -> tuple[Any, str | None]:
    """(the envelope as JSON, None) or (None, why it could not be decoded)."""
    try:
        return to_jsonable(decode(payload)), None
    except Exception as e:  # any garbage must be reportable, never fatal
        return None, _decode_error_text(e)


def _decode_error_text(e: Exception) -> str:
    if isinstance(e, msgpack.ExtraData):
        return "extra bytes after the first MessagePack value"
    if isinstance(e, ValueError) and "incomplete" in str(e).lower():
        return f"truncated MessagePack: {e}"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else f"{type(e).__name__}: not valid MessagePack"


# ---------------------------------------------------------------------- signing


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def fingerprint(raw_public: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw_public).hexdigest()


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return key.sign(SIG_CONTEXT + payload)


def verify(raw_public: bytes, payload: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(raw_public).verify(signature, SIG_CONTEXT + payload)
        return True
    except (InvalidSignature, ValueError):
        return False


def _seed_from_pkcs8(der: bytes) -> bytes | None:
    """The 32-byte seed of an Ed25519 PKCS#8 (v1 or v2) DER, found by its shape."""
    oid = bytes.fromhex("06032b6570")  # id-Ed25519
    marker = bytes.fromhex("04220420")  # OCTET STRING { OCTET STRING (32) }
    if oid not in der:
        return None
    at = der.find(marker)
    if at < 0 or at + 4 + 32 > len(der):
        return None
    return der[at + 4 : at + 4 + 32]


def load_private_key(path: str) -> Ed25519PrivateKey:
    """An Ed25519 key: PKCS#8 PEM, PKCS#8 DER (as fleetls stores it), or a hex seed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Fail(f"signing key {path}: {e.strerror or e}") from None
    key: Any = None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, Exception):
        key = None
    if key is None and b"-----BEGIN" not in data:
        seed = _seed_from_pkcs8(data)
        if seed is None:
            text = data.strip()
            if len(text) == 64 and re.fullmatch(rb"[0-9a-fA-F]{64}", text):
                seed = bytes.fromhex(text.decode())
            elif len(data) == 32:
                seed = data
        if seed is not None:
            key = Ed25519PrivateKey.from_private_bytes(seed)
    if not isinstance(key, Ed25519PrivateKey):
        raise Fail(
            f"signing key {path}: not an Ed25519 private key "
            "(PKCS#8 PEM or DER, or 64 hex digits of seed)"
        )
    return key


def signature_headers(
    payload: bytes,
    sign_key: str | None,
    present_key: str | None,
    sig_hex: str | None,
) -> tuple[dict[str, Any], str | None]:
    """The x-fleetls-* headers for `payload` and the signer's fingerprint."""
    headers: dict[str, Any] = {}
    signer_fp = None
    if sign_key:
        key = load_private_key(sign_key)
        raw = public_raw(key)
        signer_fp = fingerprint(raw)
        headers[KEY_HEADER] = raw.hex()
        headers[SIG_HEADER] = sign(key, payload).hex()
    if present_key is not None:
        headers[KEY_HEADER] = present_key.strip().lower()
    if sig_hex is not None:
        headers[SIG_HEADER] = sig_hex.strip().lower()
    return headers, signer_fp


# ----------------------------------------------------------------------- broker


def describe_error(exc: BaseException) -> str:
    """A one-line, human message for a pika (or socket) error."""
    if isinstance(exc, (pika_errors.ChannelClosedByBroker, pika_errors.ConnectionClosedByBroker)):
        return f"broker closed the {'channel' if isinstance(exc, pika_errors.ChannelClosed) else 'connection'}: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika_errors.UnroutableError):
        return "unroutable: the broker returned the message (no queue is bound for that routing key)"
    if isinstance(exc, pika_errors.NackError):
        return "the broker nacked the message (publisher confirm negative)"
    if isinstance(exc, pika_errors.ProbableAuthenticationError):
        return f"login refused (wrong user or password?): {_inner(exc)}"
    if isinstance(exc, pika_errors.ProbableAccessDeniedError):
        return f"access to the virtual host refused: {_inner(exc)}"
    if isinstance(exc, pika_errors.AuthenticationError):
        return f"authentication failed (mechanism not offered by the broker?): {_inner(exc)}"
    if isinstance(exc, pika_errors.ConnectionBlockedTimeout):
        return "the broker blocked the connection for too long (resource alarm?)"
    if isinstance(exc, AMQPConnectorStackTimeout):
        return "cannot connect to the broker: no AMQP handshake in time (is that an AMQP port?)"
    if isinstance(exc, (AMQPConnectorException, AMQPConnectionWorkflowFailed)):
        return f"cannot connect to the broker: {_inner(exc)}"
    if isinstance(exc, pika_errors.AMQPConnectionError):
        inner = _inner(exc)
        return f"cannot connect to the broker: {inner}" if inner else "cannot connect to the broker"
    if isinstance(exc, pika_errors.AMQPError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error (is that an AMQPS port, and the right CA?): {exc}"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _inner(exc: BaseException) -> str:
    """What lies under a pika connection error, as short as it can be said."""
    if isinstance(exc, (pika_errors.ConnectionClosedByBroker, pika_errors.ChannelClosedByBroker)):
        return f"{exc.reply_code} {exc.reply_text}"
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "timeout":
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    wrapped = getattr(exc, "exception", None)  # pika's connection-workflow errors
    if isinstance(wrapped, BaseException):
        return _inner(wrapped)
    parts = []
    for arg in exc.args:
        if isinstance(arg, BaseException):
            parts.append(_inner(arg))
        elif arg not in (None, ""):
            parts.append(str(arg))
    if parts:
        return "; ".join(parts)
    return str(exc) or type(exc).__name__


def connect(args: argparse.Namespace) -> "pika.BlockingConnection":
    try:
        params = pika.URLParameters(args.broker)
    except Exception as e:
        raise Fail(f"--broker {args.broker!r}: not an AMQP URL ({e})") from None
    query = args.broker.partition("?")[2]
    limit = float(args.connect_timeout)
    if "socket_timeout" not in query:
        params.socket_timeout = limit
    if "stack_timeout" not in query:
        params.stack_timeout = limit
    if "blocked_connection_timeout" not in query:
        params.blocked_connection_timeout = max(limit, float(getattr(args, "timeout", limit) or limit))
    params.connection_attempts = 1
    params.retry_delay = 0
    params.client_properties = {"connection_name": args.connection_name}
    scheme = args.broker.partition("://")[0].lower()
    if scheme not in ("amqp", "amqps"):
        raise Fail(f"--broker: use an amqp:// or amqps:// URL, not {scheme or 'no scheme'}")
    if (scheme == "amqps" or args.ca or args.cert) and "ssl_options" not in query:
        try:
            context = ssl.create_default_context(cafile=args.ca)
            if args.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if args.cert:
                context.load_cert_chain(args.cert, args.key)
        except (OSError, ssl.SSLError) as e:
            raise Fail(f"--ca/--cert/--key: {getattr(e, 'strerror', None) or e}") from None
        params.ssl_options = pika.SSLOptions(context, server_hostname=args.server_name or params.host)
    if args.external:
        params.credentials = pika.credentials.ExternalCredentials()
    return pika.BlockingConnection(params)


def close_quietly(connection: Any) -> None:
    try:
        if connection is not None and connection.is_open:
            connection.close()
    except Exception:
        pass


def refusal(exc: BaseException, codes: tuple[int, ...]) -> dict | None:
    """{"refused": true, ...} when the broker closed the channel with one of `codes`."""
    if isinstance(exc, pika_errors.ChannelClosedByBroker) and exc.reply_code in codes:
        return {"refused": True, "code": exc.reply_code, "error": f"{exc.reply_code} {exc.reply_text}"}
    return None


PROPERTY_NAMES = frozenset(
    [
        "content_type",
        "content_encoding",
        "type",
        "message_id",
        "correlation_id",
        "delivery_mode",
        "expiration",
        "priority",
        "reply_to",
        "timestamp",
        "user_id",
        "app_id",
    ]
)


def apply_property_overrides(props: dict, overrides: Any) -> dict:
    if overrides is None:
        return props
    if not isinstance(overrides, dict):
        raise Fail("--properties: must be a JSON object")
    for name, value in overrides.items():
        if name not in PROPERTY_NAMES:
            raise Fail(f"--properties: unknown AMQP property {name!r} (one of {', '.join(sorted(PROPERTY_NAMES))})")
        if value is None:
            props.pop(name, None)
        else:
            props[name] = value
    return props


def header_table(headers: Any, what: str = "--headers") -> dict:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise Fail(f"{what}: must be a JSON object")
    return dict(headers)


def publish(
    args: argparse.Namespace,
    exchange: str,
    routing_key: str,
    payload: bytes,
    props: dict,
    headers: dict,
) -> dict | None:
    """Publishes with confirms and mandatory; a refusal dict if allowed, else None."""
    return publish_many(args, exchange, routing_key, [(payload, props, headers)])


def publish_many(
    args: argparse.Namespace,
    exchange: str,
    routing_key: str,
    messages: list[tuple[bytes, dict, dict]],
) -> dict | None:
    """Publishes each (payload, properties, headers) in turn on one channel,
    each confirmed; like `publish`."""
    connection = None
    try:
        connection = connect(args)
        channel = connection.channel()
        channel.confirm_delivery()
        for payload, props, headers in messages:
            properties = pika.BasicProperties(headers=headers or None, **props)
            channel.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                body=payload,
                properties=properties,
                mandatory=True,
            )
        return None
    except pika_errors.AMQPError as e:
        if getattr(args, "refusal_ok", False):
            refused = refusal(e, (ACCESS_REFUSED,))
            if refused is not None:
                return refused
        raise
    finally:
        close_quietly(connection)


def default_delivery_mode(kind: str | None, exchange: str) -> int:
    if kind in CHILD_TO_PARENT:
        return 2
    if kind in PARENT_TO_CHILD:
        return 1
    return 1 if exchange == AGENTS_EXCHANGE else 2


def envelope_properties(envelope: Any, exchange: str) -> dict:
    """The AMQP properties fleetls would put on this (decoded) envelope."""
    props: dict[str, Any] = {"content_type": CONTENT_TYPE}
    kind = body_kind(envelope)
    if kind is not None:
        props["type"] = kind
    if isinstance(envelope, dict):
        msg_id = as_uuid(envelope.get("id"))
        if msg_id is not None:
            props["message_id"] = str(msg_id)
        re_id = as_uuid(envelope.get("re"))
        if re_id is not None:
            props["correlation_id"] = str(re_id)
    props["delivery_mode"] = default_delivery_mode(kind, exchange)
    return props


def publish_report(payload: bytes, headers: dict, msg_id: str | None, extra: dict | None = None) -> dict:
    report: dict[str, Any] = {
        "refused": False,
        "id": msg_id,
        "payload_hex": payload.hex(),
        "headers": {k: (v if isinstance(v, str) else to_jsonable(v)) for k, v in headers.items()},
    }
    if extra:
        report.update(extra)
    return report


def header_to_str(value: Any) -> str:
    """A captured header value as a string (non-strings as compact JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).hex()
    return json.dumps(_header_jsonable(value), separators=(",", ":"))


def _header_jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _header_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_header_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# ------------------------------------------------------------------ subcommands


def cmd_keygen(args: argparse.Namespace) -> dict:
    key = Ed25519PrivateKey.generate()
    encoding = serialization.Encoding.DER if args.format == "der" else serialization.Encoding.PEM
    data = key.private_bytes(
        encoding=encoding,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        raise Fail(f"--out {args.out}: {e.strerror or e}") from None
    raw = public_raw(key)
    return {"public_hex": raw.hex(), "fingerprint": fingerprint(raw), "out": args.out}


def cmd_send(args: argparse.Namespace) -> dict:
    fields = parse_json_arg(args.fields, "--fields")
    uuid_keys = UUID_KEYS_FIELDS | split_names(args.uuid_fields)
    fields = uuidify(fields, uuid_keys)
    sender = parse_uuid_arg(args.sender, "--from") if args.sender else uuid.uuid4()
    to = parse_uuid_arg(args.to, "--to") if args.to else None
    re_id = parse_uuid_arg(args.re, "--re") if args.re else None
    if args.repeat < 1:
        raise Fail("--repeat must be at least 1")
    if args.persistent:
        delivery_mode = 2
    elif args.transient:
        delivery_mode = 1
    else:
        delivery_mode = default_delivery_mode(args.kind, args.exchange)
    messages: list[tuple[bytes, dict, dict]] = []
    ids: list[str] = []
    seqs: list[int] = []
    signer_fp = None
    for n in range(args.repeat):
        msg_id = parse_uuid_arg(args.id, "--id") if args.id else uuid.uuid4()
        at = args.at if args.at is not None else now_ms()
        # A child's message carries the next of its sender's counter.
        if args.seq is not None:
            seq = args.seq + n if args.seq else 0
        else:
            seq = next_seq() if args.kind in CHILD_TO_PARENT else 0
        envelope = build_envelope(
            args.kind, fields, msg_id=msg_id, sender=sender, at=at, re_id=re_id, to=to,
            version=args.v, seq=seq,
        )
        payload = encode(envelope)
        headers, signer_fp = signature_headers(payload, args.sign_key, args.present_key, args.sig_hex)
        headers.update(header_table(parse_json_arg(args.headers, "--headers") if args.headers else None))
        props: dict[str, Any] = {
            "content_type": CONTENT_TYPE,
            "type": args.amqp_type if args.amqp_type is not None else args.kind,
            "message_id": str(msg_id),
            "delivery_mode": delivery_mode,
        }
        if re_id is not None:
            props["correlation_id"] = str(re_id)
        props = apply_property_overrides(props, parse_json_arg(args.properties, "--properties") if args.properties else None)
        messages.append((payload, props, headers))
        ids.append(str(msg_id))
        seqs.append(seq)
    refused = publish_many(args, args.exchange, args.routing_key, messages)
    if refused is not None:
        return refused
    extra: dict[str, Any] = {"kind": args.kind, "from": str(sender), "seq": seqs[-1]}
    if args.repeat > 1:
        extra.update({"sent": args.repeat, "ids": ids, "seqs": seqs})
    if to is not None:
        extra["to"] = str(to)
    if signer_fp is not None:
        extra["fingerprint"] = signer_fp
    payload, _, headers = messages[-1]
    return publish_report(payload, headers, ids[-1], extra)


def cmd_envelope(args: argparse.Namespace) -> dict:
    """One message built as `send` builds it, its bytes printed and nothing
    published: for a test that cuts it short or sends many in one batch."""
    fields = uuidify(parse_json_arg(args.fields, "--fields"), UUID_KEYS_FIELDS | split_names(args.uuid_fields))
    sender = parse_uuid_arg(args.sender, "--from") if args.sender else uuid.uuid4()
    msg_id = uuid.uuid4()
    if args.seq is not None:
        seq = args.seq
    else:
        seq = next_seq() if args.kind in CHILD_TO_PARENT else 0
    at = args.at if args.at is not None else now_ms()
    envelope = build_envelope(args.kind, fields, msg_id=msg_id, sender=sender, at=at, version=args.v, seq=seq)
    return {"id": str(msg_id), "from": str(sender), "kind": args.kind, "v": args.v, "seq": seq,
            "payload_hex": encode(envelope).hex()}


def _capture_one(method: Any, properties: Any, body: bytes) -> dict:
    headers = properties.headers or {}
    decoded, error = decode_for_report(body)
    item: dict[str, Any] = {
        "payload_hex": body.hex(),
        "headers": {str(k): header_to_str(v) for k, v in headers.items()},
        "properties": {
            "type": properties.type,
            "message_id": properties.message_id,
            "correlation_id": properties.correlation_id,
            "delivery_mode": properties.delivery_mode,
            "expiration": properties.expiration,
            "content_type": properties.content_type,
            "user_id": properties.user_id,
            "app_id": properties.app_id,
        },
        "decoded": decoded,
        "routing_key": method.routing_key,
        "exchange": method.exchange,
        "redelivered": bool(method.redelivered),
    }
    if error is not None:
        item["decode_error"] = error
    return item


def cmd_capture_setup(args: argparse.Namespace) -> dict:
    connection = None
    stage = "declare"
    try:
        connection = connect(args)
        channel = connection.channel()
        channel.queue_declare(queue=args.queue, durable=False, exclusive=False, auto_delete=False)
        stage = "bind"
        channel.queue_bind(queue=args.queue, exchange=args.exchange, routing_key=args.routing_key)
        return {"refused": False, "queue": args.queue, "exchange": args.exchange, "routing_key": args.routing_key}
    except pika_errors.AMQPError as e:
        refused = refusal(e, (ACCESS_REFUSED,))
        if refused is not None:
            refused["stage"] = stage  # "bind": the queue itself was declared
            return refused
        raise
    finally:
        close_quietly(connection)


def cmd_capture(args: argparse.Namespace) -> dict:
    connection = None
    messages: list[dict] = []
    try:
        connection = connect(args)
        channel = connection.channel()
        deadline = time.monotonic() + max(0.0, args.timeout)
        while args.count <= 0 or len(messages) < args.count:
            method, properties, body = channel.basic_get(queue=args.queue, auto_ack=False)
            if method is None:
                if time.monotonic() >= deadline:
                    break
                connection.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            messages.append(_capture_one(method, properties, body))
            if not args.peek:
                channel.basic_ack(delivery_tag=method.delivery_tag)
        # With --peek nothing was acked: closing the channel requeues it all.
        channel.close()
        return {"messages": messages}
    except pika_errors.AMQPError as e:
        refused = refusal(e, (ACCESS_REFUSED, RESOURCE_LOCKED))
        if refused is not None:
            refused["messages"] = messages
            return refused
        raise
    finally:
        close_quietly(connection)


def _set_path(envelope: dict, path: str, value: Any, uuid_keys: frozenset[str], unset: bool) -> None:
    parts = path.split(".")
    if not parts or any(p == "" for p in parts):
        raise Fail(f"--set/--unset {path!r}: not a field path")
    leaf = parts[-1]
    if parts[0] == "body" and len(parts) > 1:
        kind = body_kind(envelope)
        if kind is None:
            raise Fail(f"--set {path}: the envelope's body is not a one-entry map of a kind")
        target: Any = envelope["body"][kind]
        parts = parts[1:]
        top = False
    else:
        target = envelope
        top = True
    for part in parts[:-1]:
        if not isinstance(target, dict):
            raise Fail(f"--set {path}: {part!r} is not inside a map")
        target = target.setdefault(part, {})
        top = False
    if not isinstance(target, dict):
        raise Fail(f"--set {path}: the parent of {leaf!r} is not a map")
    if unset:
        target.pop(leaf, None)
        return
    if leaf in uuid_keys and looks_like_uuid(value):
        value = uuid.UUID(value).bytes
    if top and leaf not in target and leaf in ENVELOPE_ORDER:
        # A new envelope key goes where the encoder would write it.
        rank = ENVELOPE_ORDER.index(leaf)
        items = list(target.items())
        at = len(items)
        for i, (k, _) in enumerate(items):
            if k in ENVELOPE_ORDER and ENVELOPE_ORDER.index(k) > rank:
                at = i
                break
        items.insert(at, (leaf, value))
        target.clear()
        target.update(items)
    else:
        target[leaf] = value


def cmd_replay(args: argparse.Namespace) -> dict:
    original = parse_hex_arg(args.payload_hex, "--payload-hex")
    headers = header_table(parse_json_arg(args.headers, "--headers") if args.headers else None)
    try:
        envelope: Any = decode(original)
    except Exception as e:
        envelope = None
        decode_error = _decode_error_text(e)
    else:
        decode_error = None
    payload = original
    if args.set or args.unset:
        if not isinstance(envelope, dict):
            raise Fail(f"--set: the payload is not a MessagePack map ({decode_error or 'another type'})")
        uuid_keys = UUID_KEYS_ENVELOPE | UUID_KEYS_FIELDS | split_names(args.uuid_fields)
        for assignment in args.set or []:
            name, sep, raw_value = assignment.partition("=")
            if not sep:
                raise Fail(f"--set {assignment!r}: use FIELD=JSONVALUE")
            try:
                value = json.loads(raw_value)
            except json.JSONDecodeError:
                value = raw_value  # a bare word (e.g. an unquoted UUID) is a string
            _set_path(envelope, name.strip(), value, uuid_keys, unset=False)
        for name in args.unset or []:
            _set_path(envelope, name.strip(), None, uuid_keys, unset=True)
        payload = encode(envelope)
    props = envelope_properties(envelope, args.exchange)
    props = apply_property_overrides(props, parse_json_arg(args.properties, "--properties") if args.properties else None)
    refused = publish(args, args.exchange, args.routing_key, payload, props, headers)
    if refused is not None:
        return refused
    return publish_report(
        payload,
        headers,
        props.get("message_id"),
        {"changed": payload != original, "kind": body_kind(envelope)},
    )


def cmd_consume(args: argparse.Namespace) -> dict:
    connection = None
    taken: list[dict] = []
    try:
        connection = connect(args)
        channel = connection.channel()

        def on_message(_channel: Any, method: Any, properties: Any, _body: bytes) -> None:
            # Never acked: closing the channel gives every message back to the queue.
            taken.append({"type": properties.type, "message_id": properties.message_id})
            del method

        channel.basic_consume(
            queue=args.queue,
            on_message_callback=on_message,
            auto_ack=False,
            exclusive=args.exclusive,
        )
        deadline = time.monotonic() + max(0.0, args.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            connection.process_data_events(time_limit=min(left, 0.1))
        channel.close()
        return {
            "refused": False,
            "taken": len(taken),
            "kinds": [t["type"] for t in taken],
            "message_ids": [t["message_id"] for t in taken],
        }
    except pika_errors.AMQPError as e:
        refused = refusal(e, (ACCESS_REFUSED, RESOURCE_LOCKED))
        if refused is not None:
            return refused
        raise
    finally:
        close_quietly(connection)


def cmd_declare(args: argparse.Namespace) -> dict:
    connection = None
    try:
        connection = connect(args)
        channel = connection.channel()
        if args.delete:
            result = channel.queue_delete(queue=args.queue)
            return {
                "refused": False,
                "queue": args.queue,
                "deleted": True,
                "message_count": result.method.message_count,
            }
        arguments = parse_json_arg(args.arguments, "--arguments") if args.arguments else None
        result = channel.queue_declare(
            queue=args.queue,
            passive=args.passive,
            durable=args.durable,
            exclusive=args.exclusive,
            auto_delete=args.auto_delete,
            arguments=arguments,
        )
        return {
            "refused": False,
            "queue": result.method.queue,
            "deleted": False,
            "message_count": result.method.message_count,
            "consumer_count": result.method.consumer_count,
        }
    except pika_errors.AMQPError as e:
        refused = refusal(e, (ACCESS_REFUSED, RESOURCE_LOCKED))
        if refused is not None:
            return refused
        raise
    finally:
        close_quietly(connection)


def cmd_flood(args: argparse.Namespace) -> dict:
    """Publishes --count messages of --kind to the parent, each from a fresh
    random sender id and signed by nobody (a random key and signature): a
    flood of bad signatures from as many claimed sources."""
    if args.count < 1:
        raise Fail("--count must be at least 1")
    connection = None
    try:
        connection = connect(args)
        channel = connection.channel()
        channel.confirm_delivery()
        for _ in range(args.count):
            msg_id = uuid.uuid4()
            envelope = build_envelope(
                args.kind, {"state": {}} if args.kind == "Heartbeat" else {},
                msg_id=msg_id, sender=uuid.uuid4(), at=now_ms(), re_id=None, to=None,
                version=PROTOCOL_VERSION, seq=next_seq(),
            )
            headers = {
                "x-fleetls-key": os.urandom(32).hex(),
                "x-fleetls-sig": os.urandom(64).hex(),
            }
            properties = pika.BasicProperties(
                headers=headers, content_type=CONTENT_TYPE, type=args.kind,
                message_id=str(msg_id), delivery_mode=2,
            )
            channel.basic_publish(
                exchange="fleetls.parent", routing_key="fleetls.parent",
                body=encode(envelope), properties=properties, mandatory=True,
            )
        return {"sent": args.count}
    finally:
        close_quietly(connection)


def cmd_exchange(args: argparse.Namespace) -> dict:
    """Deletes (or declares) an exchange: what a broker user with the
    shared credentials of a default install may try against the wire."""
    connection = None
    try:
        connection = connect(args)
        channel = connection.channel()
        if args.delete:
            channel.exchange_delete(exchange=args.exchange)
            return {"refused": False, "exchange": args.exchange, "deleted": True}
        channel.exchange_declare(exchange=args.exchange, exchange_type=args.type, durable=True)
        return {"refused": False, "exchange": args.exchange, "deleted": False}
    except pika_errors.AMQPError as e:
        refused = refusal(e, (ACCESS_REFUSED,))
        if refused is not None:
            return refused
        raise
    finally:
        close_quietly(connection)


ENROLL_PREFIX = "fleetls-enroll."


def cmd_enroll_proof(args: argparse.Namespace) -> dict:
    """The `enroll` field of a Hello, computed from the token as the wire
    format describes it (README): key = SHA-256("fleetls-enroll-key-v1\\0" ||
    secret bytes); mac = HMAC-SHA-256(key, "fleetls-enroll-v1\\0" || 16 bytes
    of the agent id || for each of (signing key hex in lower case, kind,
    name): 4-byte big-endian length || UTF-8 bytes)."""
    import hmac

    token = args.token.strip()
    if not token.startswith(ENROLL_PREFIX) or token.count(".") != 2:
        raise Fail("--token is not fleetls-enroll.<id>.<secret>")
    token_id, secret_hex = token[len(ENROLL_PREFIX):].split(".")
    secret = parse_hex_arg(secret_hex, "the token's secret")
    agent = parse_uuid_arg(args.agent, "--agent")
    key = hashlib.sha256(b"fleetls-enroll-key-v1\x00" + secret).digest()
    claims = b"fleetls-enroll-v1\x00" + agent.bytes
    for field in (args.key_hex.lower(), args.kind, args.name):
        data = field.encode("utf-8")
        claims += len(data).to_bytes(4, "big") + data
    mac = hmac.new(key, claims, hashlib.sha256).hexdigest()
    return {"enroll": {"token": token_id, "mac": mac}}


def cmd_bind(args: argparse.Namespace) -> dict:
    connection = None
    try:
        connection = connect(args)
        channel = connection.channel()
        if args.unbind:
            channel.queue_unbind(queue=args.queue, exchange=args.exchange, routing_key=args.routing_key)
        else:
            channel.queue_bind(queue=args.queue, exchange=args.exchange, routing_key=args.routing_key)
        return {
            "refused": False,
            "queue": args.queue,
            "exchange": args.exchange,
            "routing_key": args.routing_key,
            "unbound": bool(args.unbind),
        }
    except pika_errors.AMQPError as e:
        refused = refusal(e, (ACCESS_REFUSED, RESOURCE_LOCKED))
        if refused is not None:
            return refused
        raise
    finally:
        close_quietly(connection)


def cmd_raw(args: argparse.Namespace) -> dict:
    payload = parse_hex_arg(args.payload_hex, "--payload-hex")
    headers = header_table(parse_json_arg(args.headers, "--headers") if args.headers else None)
    props: dict[str, Any] = {"content_type": CONTENT_TYPE}
    props = apply_property_overrides(props, parse_json_arg(args.properties, "--properties") if args.properties else None)
    refused = publish(args, args.exchange, args.routing_key, payload, props, headers)
    if refused is not None:
        return refused
    return publish_report(payload, headers, props.get("message_id"))


def cmd_forge_crl(args: argparse.Namespace) -> dict:
    """A CRL signed by the key given (an attacker's own CA), revoking nothing
    unless told, with a CRL number far above any real one and valid for a
    year: what a forged `CrlUpdated` would carry to un-revoke everyone."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        with open(args.ca_cert, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(args.ca_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError) as e:
        raise Fail(f"--ca-cert/--ca-key: {getattr(e, 'strerror', None) or e}") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - datetime.timedelta(minutes=1))
        .next_update(now + datetime.timedelta(days=365))
        .add_extension(x509.CRLNumber(args.number), critical=False)
    )
    for serial in args.revoke or []:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(now)
            .build()
        )
    crl = builder.sign(private_key=key, algorithm=hashes.SHA256())
    return {"crl_pem": crl.public_bytes(serialization.Encoding.PEM).decode("ascii")}


def cmd_admin_probe(args: argparse.Namespace) -> dict:
    """One HTTP request to the parent's admin address, as someone who can
    reach the port but holds no token (or a wrong one): the status, the
    headers and the body it got back. Raw http.client: no fleetls code."""
    import http.client

    body = None
    headers = {"Host": args.addr}
    if args.json is not None:
        parse_json_arg(args.json, "--json")
        body = args.json.encode()
        headers["Content-Type"] = "application/json"
    if args.authorization is not None:
        headers["Authorization"] = args.authorization
    host, _, port = args.addr.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
    try:
        connection.request(args.method, args.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return {
        "status": response.status,
        "headers": {k.lower(): v for k, v in response.getheaders()},
        "body": data.decode("utf-8", "replace"),
    }


def cmd_selftest(_args: argparse.Namespace) -> dict:
    checks: list[str] = []

    def check(condition: bool, what: str) -> None:
        if not condition:
            raise Fail(f"selftest failed: {what}")
        checks.append(what)

    a = uuid.UUID("11111111-2222-4333-8444-555555555555")
    b = uuid.UUID("66666666-7777-4888-9999-aaaaaaaaaaaa")
    c = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")

    # 1. The encoder writes the documented bytes (built here by hand from the
    #    MessagePack spec, not by msgpack).
    env = build_envelope("UseSsl", uuidify({"campaign": str(c)}, UUID_KEYS_FIELDS),
                         msg_id=a, sender=b, at=1_700_000_000_000)
    bin16 = lambda u: b"\xc4\x10" + u.bytes  # noqa: E731
    expected = (
        b"\x85"
        + b"\xa1v" + b"\x01"
        + b"\xa2id" + bin16(a)
        + b"\xa4from" + bin16(b)
        + b"\xa2at" + b"\xcf" + (1_700_000_000_000).to_bytes(8, "big")
        + b"\xa4body" + b"\x81" + b"\xa6UseSsl" + b"\x81" + b"\xa8campaign" + bin16(c)
    )
    check(encode(env) == expected, "envelope encodes to the hand-built MessagePack bytes")

    # 2. Optional keys in order; omitted when absent.
    env2 = build_envelope("Heartbeat", {"state": {"has_certificate": False, "ssl": False, "broker_tls": False}},
                          msg_id=a, sender=b, at=5, re_id=c, to=NIL_UUID)
    check(list(decode(encode(env2)).keys()) == ["v", "id", "re", "to", "from", "at", "body"],
          "keys v,id,re,to,from,at,body in order")
    check("re" not in decode(expected) and "to" not in decode(expected), "re/to omitted when absent")
    # A child's replay counter: after `at`, a uint64, omitted when 0.
    env3 = build_envelope("Heartbeat", {"state": {}}, msg_id=a, sender=b, at=5, seq=1_700_000_000_000_000)
    check(list(decode(encode(env3)).keys()) == ["v", "id", "from", "at", "seq", "body"], "seq after at")
    check(b"\xa3seq\xcf" + (1_700_000_000_000_000).to_bytes(8, "big") in encode(env3),
          "seq written as a named uint64")
    first, second = next_seq(), next_seq()
    check(0 < first < second, "the replay counter only rises")

    # 3. Decoding to JSON: bin16 → UUID, str UUIDs accepted.
    hello_fields = {"name": "till-1", "kind": "child", "version": "1.0.0", "location": "shop-1",
                    "hostnames": [], "ips": [], "key_fingerprint": None,
                    "state": {"has_certificate": False, "ssl": False, "broker_tls": False}}
    hello = build_envelope("Hello", hello_fields, msg_id=a, sender=b, at=42)
    js = to_jsonable(decode(encode(hello)))
    check(js["id"] == str(a) and js["from"] == str(b) and js["body"] == {"Hello": hello_fields},
          "decode gives hyphenated UUIDs and the body")
    check(as_uuid(str(a)) == a and as_uuid(a.bytes) == a, "a UUID decodes from bin16 or str")
    check(to_jsonable(b"\x01\x02") == "0102", "other bytes as hex")

    # 4. Field conversion: campaign/command and --uuid-fields, nested.
    conv = uuidify({"campaign": str(c), "step": {"ssl-port": {"host": "h", "port": 1}},
                    "x": {"peer": str(a)}, "name": str(a)}, UUID_KEYS_FIELDS | {"peer"})
    check(conv["campaign"] == c.bytes and conv["x"]["peer"] == a.bytes and conv["name"] == str(a),
          "UUID fields become bin16, others stay strings")

    # 5. Signature round trip, tamper detection, fingerprint.
    key = Ed25519PrivateKey.generate()
    raw = public_raw(key)
    payload = encode(hello)
    sig = sign(key, payload)
    check(len(raw) == 32 and len(sig) == 64, "raw key 32 bytes, signature 64 bytes")
    check(verify(raw, payload, sig), "signature verifies")
    check(not verify(raw, payload[:-1] + bytes([payload[-1] ^ 1]), sig), "altered payload fails")
    check(not verify(public_raw(Ed25519PrivateKey.generate()), payload, sig), "another key fails")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, payload)
        check(False, "a signature without the context must not verify")
    except InvalidSignature:
        checks.append("a signature without the context does not verify")
    check(fingerprint(raw) == "sha256:" + hashlib.sha256(raw).hexdigest() and len(fingerprint(raw)) == 71,
          "fingerprint is sha256:HEX of the raw key")
    # 6. Key files: PEM, DER (fleetls' PKCS#8 v2 layout), hex seed.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        ring_v2 = (bytes.fromhex("3053020101300506032b657004220420") + seed
                   + bytes.fromhex("a123032100") + raw)
        for name, data in [
            ("k.pem", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())),
            ("k.der", ring_v2),
            ("k.hex", seed.hex().encode()),
        ]:
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            headers, fp = signature_headers(payload, path, None, None)
            check(headers[KEY_HEADER] == raw.hex() and fp == fingerprint(raw)
                  and verify(raw, payload, bytes.fromhex(headers[SIG_HEADER])),
                  f"signing key loads from {name}")
        headers, _ = signature_headers(payload, os.path.join(tmp, "k.pem"), "ab" * 32, "cd" * 64)
        check(headers == {KEY_HEADER: "ab" * 32, SIG_HEADER: "cd" * 64}, "--present-key/--sig-hex override")

    # 7. Replay edits re-encode unchanged fields byte for byte.
    signed_env = decode(encode(env2))
    check(encode(signed_env) == encode(env2), "decode/encode round trip is byte-exact")
    _set_path(signed_env, "to", str(a), UUID_KEYS_ENVELOPE | UUID_KEYS_FIELDS, unset=False)
    check(decode(encode(signed_env))["to"] == a.bytes, "--set to=UUID gives bin16")
    no_to = decode(expected)
    _set_path(no_to, "to", str(c), UUID_KEYS_ENVELOPE, unset=False)
    check(list(no_to.keys()) == ["v", "id", "to", "from", "at", "body"], "--set of a new key keeps wire order")
    _set_path(no_to, "body.campaign", str(a), UUID_KEYS_ENVELOPE | UUID_KEYS_FIELDS, unset=False)
    check(no_to["body"]["UseSsl"]["campaign"] == a.bytes, "--set body.campaign=UUID gives bin16")
    check(to_jsonable(decode(b"\x81\xa1x\xa2\xff\xfe"))["x"] == "\ufffd\ufffd", "invalid UTF-8 reported, not fatal")
    check(decode_for_report(b"\xc1")[0] is None, "garbage is reported, not fatal")
    # 8. `envelope` prints what `send` would publish.
    built = cmd_envelope(argparse.Namespace(kind="Heartbeat", fields='{"state": {}}', sender=str(b), at=5,
                                            seq=7, v=2, uuid_fields=None))
    out = decode(bytes.fromhex(built["payload_hex"]))
    check(out["v"] == 2 and out["from"] == b.bytes and out["at"] == 5 and out["seq"] == 7
          and out["body"] == {"Heartbeat": {"state": {}}} and as_uuid(out["id"]) == uuid.UUID(built["id"]),
          "envelope prints the message's bytes")
    return {"ok": True, "checks": len(checks)}


# -------------------------------------------------------------------- the CLI


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(1)


def add_broker_options(p: argparse.ArgumentParser, timeout_default: float, timeout_help: str) -> None:
    g = p.add_argument_group("broker connection")
    g.add_argument("--broker", required=True, metavar="URL",
                   help="amqp://user:pass@host:port/vhost (vhost URL-encoded, e.g. %%2f); amqps:// for TLS")
    g.add_argument("--timeout", type=float, default=timeout_default, metavar="SECS", help=timeout_help)
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECS",
                   help="TCP connect and AMQP handshake limit (default 10)")
    g.add_argument("--connection-name", default="fleetls-attack", metavar="NAME",
                   help="AMQP connection name shown by the management UI (default fleetls-attack)")
    g.add_argument("--ca", metavar="PEM", help="AMQPS: CA file to verify the broker with")
    g.add_argument("--cert", metavar="PEM", help="AMQPS: client certificate (chain) to present")
    g.add_argument("--key", metavar="PEM", help="AMQPS: the client certificate's private key")
    g.add_argument("--server-name", metavar="HOST", help="AMQPS: TLS server name (default: the URL's host)")
    g.add_argument("--insecure", action="store_true", help="AMQPS: do not verify the broker's certificate")
    g.add_argument("--external", action="store_true", help="authenticate with SASL EXTERNAL (the client certificate)")


def add_publish_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exchange", required=True, metavar="NAME", help="e.g. fleetls.agents or fleetls.parent")
    p.add_argument("--routing-key", required=True, metavar="KEY",
                   help="the agent id for fleetls.agents, fleetls.parent for fleetls.parent")
    p.add_argument("--headers", metavar="JSON", help="AMQP headers as a JSON object (added last: they win)")
    p.add_argument("--properties", metavar="JSON",
                   help="AMQP property overrides as a JSON object (null removes one), e.g. "
                        '\'{"type": "UseSsl", "expiration": "60000"}\'')
    p.add_argument("--refusal-ok", action="store_true",
                   help='print {"refused": true, ...} and exit 0 when the broker refuses the publish (403)')


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fleetls_attack.py", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="show pika's log on stderr")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("keygen", help="make an Ed25519 signing key")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write it (mode 0600)")
    p.add_argument("--format", choices=["pem", "der"], default="pem",
                   help="PKCS#8 PEM (default) or PKCS#8 DER (how fleetls stores its keys)")
    p.set_defaults(handler=cmd_keygen, network=False)

    p = sub.add_parser("send", help="build, optionally sign, and publish one fleetls message")
    add_broker_options(p, 10.0, "limit for the publish and its confirm (default 10)")
    add_publish_options(p)
    p.add_argument("--kind", required=True, metavar="KIND", help="body kind, e.g. UseBrokerTls (also the AMQP type)")
    p.add_argument("--fields", default="{}", metavar="JSON", help="the kind's fields as JSON (default {})")
    p.add_argument("--from", dest="sender", metavar="UUID", help="sender id (default random; `nil` = all zeros)")
    p.add_argument("--to", metavar="UUID", help="addressee (omitted when not given)")
    p.add_argument("--re", metavar="UUID", help="the message answered (also correlation_id)")
    p.add_argument("--id", metavar="UUID", help="message id (default random)")
    p.add_argument("--at", type=int, metavar="MS", help="timestamp, unix ms (default now)")
    p.add_argument("--seq", type=int, metavar="N",
                   help="the sender's replay counter (default: for child→parent kinds, the next of a "
                        "microsecond clock that only rises; for commands none); 0 leaves it out")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="send N such messages on one connection, each with its own id, at and seq "
                        "(default 1); the answer then also lists `ids` and `seqs`")
    p.add_argument("--v", type=int, default=PROTOCOL_VERSION, metavar="N", help="protocol version (default 1)")
    p.add_argument("--sign-key", metavar="FILE", help="Ed25519 private key to sign with")
    p.add_argument("--present-key", metavar="HEX", help="put this public key in x-fleetls-key instead")
    p.add_argument("--sig-hex", metavar="HEX", help="put this literal signature in x-fleetls-sig")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--persistent", action="store_true", help="delivery_mode 2")
    mode.add_argument("--transient", action="store_true", help="delivery_mode 1")
    p.add_argument("--uuid-fields", metavar="A,B", help="more field names whose UUID strings become bin16")
    p.add_argument("--amqp-type", metavar="TYPE", help="AMQP type property (default: the kind)")
    p.set_defaults(handler=cmd_send, network=True)

    p = sub.add_parser("envelope", help="build one fleetls message and print its bytes (no broker)")
    p.add_argument("--kind", required=True, metavar="KIND", help="body kind, e.g. Hello")
    p.add_argument("--fields", default="{}", metavar="JSON", help="the kind's fields as JSON (default {})")
    p.add_argument("--from", dest="sender", metavar="UUID", help="sender id (default random; `nil` = all zeros)")
    p.add_argument("--at", type=int, metavar="MS", help="timestamp, unix ms (default now)")
    p.add_argument("--seq", type=int, metavar="N", help="the sender's replay counter (default as `send`); 0 leaves it out")
    p.add_argument("--v", type=int, default=PROTOCOL_VERSION, metavar="N", help="protocol version (default 1)")
    p.add_argument("--uuid-fields", metavar="A,B", help="more field names whose UUID strings become bin16")
    p.set_defaults(handler=cmd_envelope, network=False)

    p = sub.add_parser("capture-setup", help="declare a queue and bind it to copy traffic")
    add_broker_options(p, 10.0, "limit for the declare and bind (default 10)")
    p.add_argument("--exchange", required=True, metavar="NAME")
    p.add_argument("--routing-key", required=True, metavar="KEY")
    p.add_argument("--queue", required=True, metavar="NAME")
    p.set_defaults(handler=cmd_capture_setup, network=True)

    p = sub.add_parser("capture", help="read (and ack) messages from a queue")
    add_broker_options(p, 5.0, "how long to poll for messages (default 5)")
    p.add_argument("--queue", required=True, metavar="NAME")
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help="stop after N messages (default 1; 0 = all that come before the timeout)")
    p.add_argument("--peek", action="store_true", help="do not ack: every message goes back to the queue")
    p.set_defaults(handler=cmd_capture, network=True)

    p = sub.add_parser("replay", help="republish a captured payload, exactly or altered")
    add_broker_options(p, 10.0, "limit for the publish and its confirm (default 10)")
    add_publish_options(p)
    p.add_argument("--payload-hex", required=True, metavar="HEX|@FILE")
    p.add_argument("--set", action="append", metavar="FIELD=JSONVALUE",
                   help="change an envelope field (to, at, id, ...) or body.FIELD; repeatable. "
                        "A value that is not JSON is taken as a string")
    p.add_argument("--unset", action="append", metavar="FIELD", help="remove a field; repeatable")
    p.add_argument("--uuid-fields", metavar="A,B", help="more field names whose UUID strings become bin16")
    p.set_defaults(handler=cmd_replay, network=True)

    p = sub.add_parser("consume", help="try to consume a queue for a moment (messages are requeued)")
    add_broker_options(p, 1.0, "how long to consume (default 1)")
    p.add_argument("--queue", required=True, metavar="NAME")
    p.add_argument("--exclusive", action="store_true", help="ask for an exclusive consumer")
    p.set_defaults(handler=cmd_consume, network=True)

    p = sub.add_parser("declare", help="try to declare (or --delete) a queue")
    add_broker_options(p, 10.0, "limit for the operation (default 10)")
    p.add_argument("--queue", required=True, metavar="NAME")
    p.add_argument("--delete", action="store_true", help="delete the queue instead of declaring it")
    p.add_argument("--passive", action="store_true", help="only check that it exists")
    p.add_argument("--durable", action="store_true")
    p.add_argument("--exclusive", action="store_true")
    p.add_argument("--auto-delete", action="store_true")
    p.add_argument("--arguments", metavar="JSON", help="queue arguments as a JSON object")
    p.set_defaults(handler=cmd_declare, network=True)

    p = sub.add_parser("bind", help="try to bind (or --unbind) a queue to an exchange")
    add_broker_options(p, 10.0, "limit for the operation (default 10)")
    p.add_argument("--queue", required=True, metavar="Q")
    p.add_argument("--exchange", required=True, metavar="E")
    p.add_argument("--routing-key", required=True, metavar="K")
    p.add_argument("--unbind", action="store_true", help="remove the binding instead")
    p.set_defaults(handler=cmd_bind, network=True)

    p = sub.add_parser("flood", help="publish many badly signed messages to the parent, each from a new sender")
    add_broker_options(p, 120.0, "limit for the whole flood (default 120)")
    p.add_argument("--count", type=int, required=True, metavar="N")
    p.add_argument("--kind", default="Heartbeat", help="body kind (default Heartbeat)")
    p.set_defaults(handler=cmd_flood, network=True)

    p = sub.add_parser("exchange", help="try to delete (or declare) an exchange")
    add_broker_options(p, 10.0, "limit for the operation (default 10)")
    p.add_argument("--exchange", required=True, metavar="E")
    p.add_argument("--delete", action="store_true", help="delete it (default: declare it)")
    p.add_argument("--type", default="direct", help="the type when declaring (default direct)")
    p.set_defaults(handler=cmd_exchange, network=True)

    p = sub.add_parser("enroll-proof", help="the enroll field of a Hello proving a token (no broker)")
    p.add_argument("--token", required=True, metavar="TOKEN", help="fleetls-enroll.<id>.<secret>")
    p.add_argument("--agent", required=True, metavar="UUID", help="the agent id the Hello is from")
    p.add_argument("--key-hex", required=True, metavar="HEX", help="the public key the Hello is signed with (hex)")
    p.add_argument("--kind", required=True, help="child, mpos or local-parent")
    p.add_argument("--name", required=True, help="the name the Hello gives")
    p.set_defaults(handler=cmd_enroll_proof, network=False)

    p = sub.add_parser("raw", help="publish arbitrary bytes")
    add_broker_options(p, 10.0, "limit for the publish and its confirm (default 10)")
    add_publish_options(p)
    p.add_argument("--payload-hex", required=True, metavar="HEX|@FILE")
    p.set_defaults(handler=cmd_raw, network=True)

    p = sub.add_parser("forge-crl", help="sign a CRL with a CA of the attacker's own")
    p.add_argument("--ca-cert", required=True, metavar="PEM", help="the CA certificate (its subject is the issuer)")
    p.add_argument("--ca-key", required=True, metavar="PEM", help="the CA's private key (PKCS#8 or SEC1 PEM)")
    p.add_argument("--number", type=int, default=2**62, metavar="N", help="the CRL number (default 2^62)")
    p.add_argument("--revoke", action="append", metavar="HEX", help="a serial to list as revoked; repeatable")
    p.set_defaults(handler=cmd_forge_crl, network=False)

    p = sub.add_parser("admin-probe", help="one HTTP request to the admin address (no token, or a wrong one)")
    p.add_argument("--addr", required=True, metavar="HOST:PORT", help="the admin address")
    p.add_argument("--method", default="GET", metavar="VERB")
    p.add_argument("--path", required=True, metavar="PATH")
    p.add_argument("--json", metavar="JSON", help="a JSON body to send")
    p.add_argument("--authorization", metavar="VALUE", help="an Authorization header to send (default none)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECS", help="limit for the request (default 30)")
    p.set_defaults(handler=cmd_admin_probe, network=False)

    p = sub.add_parser("selftest", help="check encoding and signing in memory (no broker)")
    p.set_defaults(handler=cmd_selftest, network=False)
    return parser


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(1)


def install_watchdog(seconds: float) -> None:
    """Whatever pika does, the process ends (exit 1) after `seconds`."""

    def expired(_signum: int, _frame: Any) -> None:
        os.write(2, f"{PROG}: error: timed out after {seconds:g}s waiting for the broker\n".encode())
        os._exit(1)

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL, stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("pika").setLevel(logging.CRITICAL + 1)
    if args.network:
        if args.timeout < 0 or args.connect_timeout <= 0:
            fail("--timeout must be >= 0 and --connect-timeout > 0")
        install_watchdog(args.connect_timeout + args.timeout + 5.0)
    try:
        result = args.handler(args)
    except Fail as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted")
    except (pika_errors.AMQPError, AMQPConnectorException, AMQPConnectionWorkflowFailed, OSError) as e:
        fail(describe_error(e))
    except Exception as e:  # a clean line instead of a traceback, with the type
        fail(f"unexpected {type(e).__name__}: {e}")
    finally:
        if args.network:
            signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
