"""The golden vectors of docs/wire.md (test/fixtures/wire/vectors.json), recomputed by the
package's own modules: keys, the canonical SampleRef and its MAC, the sealed request and
reply, and the tiny sample file (manifest, checksum, bytes). A mismatch means the package and
the document disagree."""
import json
import os
import struct

import numpy as np
import pytest

from draftwire import keys as K
from draftwire import sampleref, store, wire
from draftwire.arrays import bf16_bits_to_f32, f32_to_bf16_bits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VEC = json.load(open(os.path.join(ROOT, "test", "fixtures", "wire", "vectors.json")))
INP = VEC["inputs"]


@pytest.fixture(scope="module")
def keys():
    return K.Keys(INP["secret"])


def test_keys(keys):
    assert keys.mac_key.hex() == VEC["keys"]["macKey"]
    assert keys.nats_user == VEC["keys"]["natsUser"]
    assert keys.nats_pass == VEC["keys"]["natsPass"]
    assert keys.store_token(INP["storeId"]) == VEC["keys"]["storeToken"]


def test_ref_canonical_bytes_and_mac(keys):
    ref = INP["ref"]
    assert sampleref.canonical_bytes(ref).hex() == VEC["ref"]["unsignedHex"]
    signed = sampleref.sign(keys, ref)
    assert signed["mac"].hex() == VEC["ref"]["mac"]
    assert sampleref.encode(signed).hex() == VEC["ref"]["encodedHex"]
    assert sampleref.verify(keys, signed)
    # Field order and integer widths on the wire are free; the MAC input is not.
    shuffled = dict(reversed(list(signed.items())))
    shuffled["features"] = dict(reversed(list(signed["features"].items())))
    assert sampleref.verify(keys, shuffled)
    bad = dict(signed, mac=bytes([signed["mac"][0] ^ 1]) + signed["mac"][1:])
    assert not sampleref.verify(keys, bad)


def test_sealed_request(keys):
    rq = INP["request"]
    signed = sampleref.sign(keys, INP["ref"])
    frame = wire.request_frame(rq["subject"], rq["reply"], rq["idempotencyKey"], rq["attempt"], {"ref": signed})
    body = wire.pack(frame)
    assert body.hex() == VEC["request"]["frameHex"]
    nonce = bytes.fromhex(rq["nonce"])
    assert wire.envelope_mac_input(rq["ts"], nonce, body).hex() == VEC["request"]["macInputHex"]
    sealed = wire.seal(keys, frame, ts=rq["ts"], nonce=nonce)
    assert sealed.hex() == VEC["request"]["sealedHex"]
    assert keys.mac(wire.envelope_mac_input(rq["ts"], nonce, body)).hex() == VEC["request"]["mac"]
    # and it opens again (inside its window), the ref's ts decoded from float 64 to an int
    opened = wire.open_sealed(keys, sealed, now=rq["ts"] + 10)
    assert opened["d"]["ref"]["generation"] == INP["ref"]["generation"]
    assert isinstance(opened["d"]["ref"]["generation"], int)


def test_sealed_reply_verification(keys):
    rq, rp = INP["request"], INP["reply"]
    frame = wire.reply_frame(rq["idempotencyKey"], rq["reply"], rp["result"])
    assert wire.pack(frame).hex() == VEC["reply"]["frameHex"]
    sealed = wire.seal(keys, frame, ts=rp["ts"], nonce=bytes.fromhex(rp["nonce"]))
    assert sealed.hex() == VEC["reply"]["sealedHex"]
    stored = bytes.fromhex(VEC["reply"]["sealedHex"])
    args = dict(subject=rq["subject"], key=rq["idempotencyKey"], inbox=rq["reply"])
    assert wire.open_reply(keys, stored, None, now=rp["ts"], **args) == rp["result"]
    with pytest.raises(wire.BadReply) as e:  # another attempt's inbox
        wire.open_reply(keys, stored, None, now=rp["ts"], **dict(args, inbox="_INBOX.OTHER"))
    assert e.value.code == "AUTH"
    with pytest.raises(wire.BadReply):  # another request
        wire.open_reply(keys, stored, None, now=rp["ts"], **dict(args, key="commit:x:1"))
    with pytest.raises(wire.BadReply):  # outside the 30 s window
        wire.open_reply(keys, stored, None, now=rp["ts"] + 30_001, **args)
    with pytest.raises(wire.BadReply):  # another secret
        wire.open_reply(K.Keys("another-secret-of-16-bytes"), stored, None, now=rp["ts"], **args)
    flipped = bytearray(stored)
    flipped[-1] ^= 1
    with pytest.raises(wire.BadReply):
        wire.open_reply(keys, bytes(flipped), None, now=rp["ts"], **args)


def test_no_responder_is_unavailable(keys):
    from draftwire.errors import UnavailableError

    with pytest.raises(UnavailableError) as e:
        wire.open_reply(keys, b"", {"Status": "503"}, subject="dw.j.queue.commit", key="k", inbox="_INBOX.x")
    assert e.value.retryable and e.value.code == "UNAVAILABLE"


def test_error_reply_is_raised_as_its_class(keys):
    from draftwire import errors as E

    for code, cls, retryable in [("SCHEMA", E.SchemaError, False), ("INPUT_CLOSED", E.InputClosed, False),
                                 ("BACKPRESSURE", E.BackpressureError, True), ("AUTH", E.AuthError, False),
                                 ("STALE_GENERATION", E.StaleGenerationError, False), ("CONFLICT", E.DraftwireError, False)]:
        f = wire.error_frame("k", "_INBOX.x", code, "no", retryable, {"field": "last"})
        with pytest.raises(cls) as e:
            wire.open_reply(keys, wire.seal(keys, f), None, subject="dw.j.queue.commit", key="k", inbox="_INBOX.x")
        assert (e.value.code, e.value.retryable, e.value.detail["field"]) == (code, retryable, "last")


def test_kv_body(keys):
    kv = INP["kv"]
    body = wire.pack({"d": kv["value"], "v": kv["version"]})
    assert body.hex() == VEC["kv"]["bodyHex"]
    mac_in = f"kv:{kv['bucket']}:{kv['key']}".encode() + b"\x00" + body
    assert mac_in.hex() == VEC["kv"]["macInputHex"]
    assert keys.mac(mac_in).hex() == VEC["kv"]["mac"]
    assert wire.pack({"b": body, "m": keys.mac(mac_in)}).hex() == VEC["kv"]["recordHex"]


def test_sample_file():
    sm = INP["sample"]
    T, H, bb = sm["T"], sm["H"], sm["blockBytes"]
    tensors = [
        ("ids", "i32", [T], np.array(sm["ids"], dtype="<i4")),
        ("aux", "bf16", [T, 3 * H], np.array(sm["aux"], dtype="<u2").reshape(T, 3 * H)),
        ("last", "f32", [T, H], np.array(sm["last"], dtype="<f4").reshape(T, H)),
        ("mask", "u8", [T], np.array(sm["mask"], dtype=np.uint8)),
    ]
    mj = store.manifest_json(tensors, bb)
    assert mj == VEC["sample"]["manifestJson"]
    assert store.checksum_of(mj) == VEC["sample"]["checksum"]
    data = store.safetensors_bytes(tensors, {"format": "draftwire/1", "draftwire.manifest": mj})
    assert data.hex() == VEC["sample"]["fileHex"]


def test_sample_file_opens_with_safetensors(tmp_path):
    from safetensors.numpy import load_file

    sm = INP["sample"]
    T, H = sm["T"], sm["H"]
    tensors = [("ids", "i32", [T], np.array(sm["ids"], dtype="<i4")), ("last", "f32", [T, H], np.array(sm["last"], dtype="<f4"))]
    mj = store.manifest_json(tensors)
    store.publish(str(tmp_path), "s.g1.safetensors", [store.safetensors_header(tensors, {"format": "draftwire/1", "draftwire.manifest": mj}), *(t[3] for t in tensors)])
    got = load_file(str(tmp_path / "s.g1.safetensors"))
    assert got["ids"].tolist() == sm["ids"] and got["last"].reshape(-1).tolist() == sm["last"]
    assert os.stat(tmp_path / "s.g1.safetensors").st_mode & 0o777 == 0o640
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []
    assert store.verify_file(str(tmp_path / "s.g1.safetensors"))["checksum"] == store.checksum_of(mj)


def test_msgpack_conventions():
    assert wire.pack({}) == b"\xde\x00\x00"  # map 16 always
    assert wire.pack(2 ** 32 - 1) == b"\xce\xff\xff\xff\xff"
    assert wire.pack(2 ** 32) == b"\xcb" + struct.pack(">d", 2.0 ** 32)  # float 64 from 2^32
    assert wire.pack(-(2 ** 31)) == b"\xd2\x80\x00\x00\x00"
    assert wire.pack(-(2 ** 31) - 1)[:1] == b"\xcb"
    assert wire.pack(3.0) == b"\x03"  # a JavaScript number: integral values are integers
    assert wire.pack(0.5) == b"\xcb" + struct.pack(">d", 0.5)
    assert wire.pack([1] * 16)[:3] == b"\xdc\x00\x10"
    assert wire.pack("a" * 32)[:2] == b"\xd9\x20"
    assert wire.pack(b"x" * 300)[:3] == b"\xc5\x01\x2c"
    assert wire.pack(np.int64(7)) == b"\x07"
    # what Draftwire accepts is wider: uint 64 decodes as the integer it is
    assert wire.unpack(b"\xcf" + struct.pack(">Q", 1733000000123)) == 1733000000123
    assert wire.unpack(wire.pack(1733000000123)) == 1733000000123
    with pytest.raises(Exception):
        wire.unpack(b"\xd4\x01\x00")  # an extension type


def test_bf16_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.4e38, float("inf"), 1e-40], dtype=np.float32)
    bits = f32_to_bf16_bits(x)
    # 1 + 2^-8 is a tie: to even (1.0); 1 + 3·2^-8 is a tie: to even (1 + 2^-6)
    assert bits.tolist()[:4] == [0x3F80, 0x3F80, 0x3F82, 0xC020]
    assert bits[5] == 0x7F80
    nan = f32_to_bf16_bits(np.array([np.nan], dtype=np.float32))
    assert np.isnan(bf16_bits_to_f32(nan))[0]
    import torch  # same as torch's own conversion (also round to nearest even)

    r = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    assert np.array_equal(f32_to_bf16_bits(r), torch.from_numpy(r).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
