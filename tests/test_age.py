"""age-encrypted archives (.tar.age, .tar.zst.age, .tar.gz.age): keys made by the real
age-keygen, files by the real age, damaged at known places.

The real tool is the oracle: every file called damaged here is one `age -d` refuses, and where
a member is named, it is the member a restore through `age -d` is cut in."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from archcheck.api import resume, verify
from conftest import cli, corruption, maker, member_holding, member_offsets, members_of, only, unhurried

CHUNK, SEALED = 64 * 1024, 64 * 1024 + 16


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path, str]:
    """(identity file, another identity file, the first's recipient)."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("key.txt", "other.txt"):
        subprocess.run(["age-keygen", "-o", folder / name], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", folder / "key.txt"], check=True, capture_output=True,
                               text=True).stdout.strip()
    return folder / "key.txt", folder / "other.txt", recipient


PACK = {"tar": None, "zstd": ["zstd", "-q", "-c"], "gzip": ["gzip", "-c"]}


def _encrypted(plain: Path, inner: str, recipient: str) -> bytes:
    data = plain.read_bytes()
    if PACK[inner]:
        data = subprocess.run(PACK[inner], input=data, capture_output=True, check=True).stdout
    return subprocess.run(["age", "-r", recipient], input=data, capture_output=True, check=True).stdout


def _payload_start(file: bytes) -> int:
    """After the header's MAC line, the 16-byte nonce."""
    return file.index(b"\n", file.index(b"\n--- ") + 1) + 1 + 16


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _age_refuses(path: Path, key: Path) -> bool:
    return subprocess.run(["age", "-d", "-i", key, path], capture_output=True).returncode != 0


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


@pytest.mark.parametrize("inner,fmt", [("tar", "tar+age"), ("zstd", "tar+zstd+age"), ("gzip", "tar+gzip+age")])
def test_an_encrypted_archive_gives_the_plain_tar_s_members(mixed_tar, mixed_reference, keys, tmp_path, inner, fmt):
    key, _, recipient = keys
    archive = _write(tmp_path, "a.age", _encrypted(mixed_tar, inner, recipient))
    result = verify(archive, state=tmp_path / "s", identity=key)
    assert (result.verdict, result.exit_code, result.manifest.format) == ("intact", 0, fmt)
    assert members_of(result) == members_of(mixed_reference)
    assert not [f for f in result.findings if f.category.value != "info"]


def test_a_flipped_bit_in_a_plain_tar_is_named_at_its_chunk_and_member(mixed_tar, keys, tmp_path):
    key, _, recipient = keys
    clean = _encrypted(mixed_tar, "tar", recipient)
    start, k = _payload_start(clean), 40
    archive = _write(tmp_path, "bad.tar.age", _flip(clean, start + k * SEALED + 1000))
    assert _age_refuses(archive, key)
    result = verify(archive, state=tmp_path / "s", identity=key)
    assert (result.verdict, result.exit_code, corruption(result)) == ("corrupt", 1, ["AGE_CHUNK_AUTH"])
    finding = only(result, "AGE_CHUNK_AUTH")
    details = dict(finding.details)
    assert finding.location.byte_range == (start + k * SEALED, start + (k + 1) * SEALED)
    assert (details["chunk"], details["plaintext_range"]) == (k, f"{k * CHUNK}-{(k + 1) * CHUNK}")
    assert finding.location.member == member_holding(mixed_tar, k * CHUNK)
    assert "age -d stops at this chunk" in details["restore_loses"]


def test_a_failed_chunk_over_a_header_does_not_end_the_walk(mixed_tar, keys, tmp_path):
    """A failed chunk reads as zeros; over a member's header they make an end marker. That is
    the chunk's effect, and the walk goes on past it to damage further on."""
    key, _, recipient = keys
    headers = sorted(header for header, _ in member_offsets(mixed_tar).values())
    k = next(h // CHUNK for h in headers if h >= CHUNK and h % CHUNK + 1024 <= CHUNK)
    resumed = next(h for h in headers if h >= (k + 1) * CHUNK)  # the walk goes on at this header
    later = next(h for h in headers if h > resumed)
    plain = bytearray(mixed_tar.read_bytes())
    plain[later + 10] ^= 0x01  # that header's checksum fails
    clean = _encrypted(_write(tmp_path, "damaged.tar", bytes(plain)), "tar", recipient)
    archive = _write(tmp_path, "bad.tar.age", _flip(clean, _payload_start(clean) + k * SEALED + 1000))
    result = verify(archive, state=tmp_path / "s", identity=key)
    assert (result.exit_code, corruption(result)) == (1, ["AGE_CHUNK_AUTH", "TAR_HEADER_CHECKSUM"])
    assert any(e.startswith("TAR_MEMBERS_AFTER_END") for e in dict(only(result, "AGE_CHUNK_AUTH").details)["effects"])
    assert dict(only(result, "TAR_HEADER_CHECKSUM").details)["plaintext_range"] == f"{later}-{later + 512}"


def _member_cut_by_age_d(archive: Path, key: Path) -> str:
    """The last member `age -d | zstd -d | tar t` lists: the one a restore is cut in."""
    listing = subprocess.run(f"age -d -i {key} {archive} | zstd -dcq 2>/dev/null | tar -t 2>/dev/null",
                             shell=True, capture_output=True, text=True).stdout.split()
    return listing[-1].removeprefix("./")


@pytest.fixture(scope="module")
def worded_tar(tmp_path_factory) -> Path:
    """A tar, made by real tar, of text members of random words: compressed, and no block stored."""
    import random
    rnd = random.Random(5)
    words = ["".join(rnd.choice("abcdefghij") for _ in range(rnd.randrange(2, 9))) for _ in range(5000)]
    tree = tmp_path_factory.mktemp("worded")
    for i in range(10):
        (tree / f"w{i}.txt").write_text(" ".join(rnd.choices(words, k=rnd.randrange(10_000, 120_000))))
    tar = tree.parent / "worded.tar"
    subprocess.run(["tar", "-C", tree, "-cf", tar, "--sort=name", "--mtime=2026-01-01 00:00Z", "--owner=0",
                    "--group=0", "--numeric-owner", "."], check=True)
    return tar


@pytest.mark.parametrize("content,effect,chunk", [("random", "ZSTD_CHECKSUM_MISMATCH", "middle"), ("words", "ZSTD_", "middle"),
                                                  ("random", "ZSTD_", 16), ("words", "ZSTD_", 16)])
def test_a_flipped_bit_in_a_compressed_archive_names_where_a_restore_is_cut(mixed_tar, worded_tar, keys, tmp_path,
                                                                           content, effect, chunk):
    """The chunk that fails is read as zeros: in stored blocks (random bytes) that only makes
    the content wrong, in compressed ones (text) a block fail. Either way the member named is
    the one a restore through age -d is cut in: what the plaintext before the chunk decodes to
    ends in it, not where decoding went wrong. Chunk 16 starts where a 1 MiB read ends."""
    key, _, recipient = keys
    tar = mixed_tar if content == "random" else worded_tar
    compressed = subprocess.run(PACK["zstd"], input=tar.read_bytes(), capture_output=True, check=True).stdout
    k = len(compressed) // CHUNK // 2 if chunk == "middle" else chunk
    assert k * CHUNK < len(compressed)
    clean = _encrypted(_write(tmp_path, "a.tar.zst", compressed), "tar", recipient)  # (compressed already)
    start = _payload_start(clean)
    archive = _write(tmp_path, "bad.tar.zst.age", _flip(clean, start + k * SEALED + 5000))
    result = verify(archive, state=tmp_path / "s", identity=key)
    # what zstd and tar make of the chunk is its effect, not damage of its own
    assert (result.exit_code, corruption(result)) == (1, ["AGE_CHUNK_AUTH"])
    finding = only(result, "AGE_CHUNK_AUTH")
    details = dict(finding.details)
    assert details["chunk"] == k and details["effects"][0].startswith(effect)
    assert finding.location.byte_range == (start + k * SEALED, start + (k + 1) * SEALED)
    assert finding.location.member.removeprefix("./") == _member_cut_by_age_d(archive, key)
    # zstd -d gives what the plaintext before the chunk decodes to, but for the part of a block
    # that it has not whole (libzstd would give a stored block's part)
    cut = len(subprocess.run(["zstd", "-dcq"], input=compressed[:k * CHUNK], capture_output=True).stdout)
    assert 0 <= finding.location.uncompressed_offset - cut < 128 * 1024
    data_offset = member_offsets(tar)[finding.location.member][1]
    assert finding.location.member_offset == finding.location.uncompressed_offset - data_offset
    assert details["restore_loses"].startswith(f"{finding.location.member} from byte {finding.location.member_offset} on")


@pytest.mark.parametrize("kept", [21, 0])
def test_a_file_cut_at_a_chunk_boundary_is_truncated(mixed_tar, keys, tmp_path, kept):
    """``kept`` whole chunks are left; none: the header and nonce alone, which an empty
    plaintext never is (its final chunk is a tag)."""
    key, _, recipient = keys
    clean = _encrypted(mixed_tar, "tar", recipient)
    start = _payload_start(clean)
    archive = _write(tmp_path, "cut.tar.age", clean[:start + kept * SEALED])
    assert _age_refuses(archive, key)
    result = verify(archive, state=tmp_path / "s", identity=key)
    assert (result.exit_code, corruption(result)) == (1, ["AGE_TRUNCATED"])
    finding = only(result, "AGE_TRUNCATED")
    last = max(kept - 1, 0)
    assert dict(finding.details)["chunk"] == last and "not marked as the final chunk" in finding.message
    assert finding.location.byte_range == (start + last * SEALED, start + kept * SEALED)


@pytest.mark.parametrize("change", ["cut inside a chunk", "garbage appended", "another file appended"])
def test_a_changed_end_fails_the_chunk_it_is_in(mixed_tar, keys, tmp_path, change):
    key, _, recipient = keys
    clean = _encrypted(mixed_tar, "tar", recipient)
    data = {"cut inside a chunk": clean[:len(clean) - 100], "garbage appended": clean + b"garbage" * 10,
            "another file appended": clean + _encrypted(mixed_tar, "tar", recipient)}[change]
    archive = _write(tmp_path, "changed.tar.age", data)
    assert _age_refuses(archive, key)
    result = verify(archive, state=tmp_path / "s", identity=key)
    assert result.exit_code == 1 and set(corruption(result)) == {"AGE_CHUNK_AUTH"}
    first = next(f for f in result.findings if f.code == "AGE_CHUNK_AUTH")
    # the last byte left, or the first added (a whole last chunk, then more, is one more chunk)
    changed = len(data) - 1 if change.startswith("cut") else len(clean)
    assert first.location.byte_range[0] <= changed < first.location.byte_range[1]


@pytest.mark.parametrize("change", ["another MAC", "a MAC that is no base64"])
def test_a_changed_header_mac_is_a_damaged_header(mixed_tar, keys, tmp_path, change):
    key, _, recipient = keys
    clean = _encrypted(mixed_tar, "tar", recipient)
    mac = clean.index(b"\n--- ") + 5
    other = {"another MAC": b"B" if clean[mac:mac + 1] == b"A" else b"A", "a MAC that is no base64": b"!"}[change]
    archive = _write(tmp_path, "mac.tar.age", clean[:mac] + other + clean[mac + 1:])
    assert _age_refuses(archive, key)
    result = verify(archive, state=tmp_path / "s", identity=key)
    assert (result.exit_code, corruption(result)) == (1, ["AGE_BAD_HEADER"])
    assert only(result, "AGE_BAD_HEADER").location.byte_range == (0, _payload_start(clean))


def test_the_wrong_identity_is_a_usage_error_and_nothing_is_called_corrupt(mixed_tar, keys, tmp_path):
    _, other, recipient = keys
    archive = _write(tmp_path, "a.tar.age", _encrypted(mixed_tar, "tar", recipient))
    run = cli("verify", archive, "--identity", other, "--state-dir", tmp_path / "s", "--no-progress")
    assert run.returncode == 2
    assert run.stderr.strip().endswith("opens it (it is encrypted to 1 X25519 recipient, or those stanzas are damaged)")
    assert "CORRUPT" not in run.stdout


def test_without_an_identity_the_header_is_checked_and_the_rest_is_unverified(mixed_tar, keys, tmp_path, monkeypatch):
    monkeypatch.delenv("AGE_IDENTITY", raising=False)
    _, _, recipient = keys
    clean = _encrypted(mixed_tar, "tar", recipient)
    result = verify(_write(tmp_path, "a.tar.age", clean), state=tmp_path / "s")
    assert (result.verdict, result.exit_code) == ("incomplete", 3)
    finding = only(result, "AGE_NOT_DECRYPTED")
    chunks = -(-(len(clean) - _payload_start(clean)) // SEALED)
    assert dict(finding.details)["chunks"] == chunks and "1 X25519 recipient" in finding.message
    header_only = verify(_write(tmp_path, "empty.age", clean[:_payload_start(clean)]), state=tmp_path / "s2")
    assert (header_only.exit_code, corruption(header_only)) == (1, ["AGE_TRUNCATED"])


def test_the_identity_from_the_environment_is_used_and_never_written(mixed_tar, keys, tmp_path):
    key, _, recipient = keys
    secret = next(line for line in key.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    archive = _write(tmp_path, "a.tar.zst.age", _encrypted(mixed_tar, "zstd", recipient))
    run = cli("verify", archive, "--state-dir", tmp_path / "s", "--report", tmp_path / "report.json",
              "--log-format", "json", "--log-level", "debug", "--no-progress", env={"AGE_IDENTITY": secret})
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "report.json").read_text())["archives"][0]["format"] == "tar+zstd+age"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".age"]
    assert written and not [p for p in written if secret.encode() in p.read_bytes()]
    assert secret not in run.stdout + run.stderr


def test_an_interrupted_encrypted_archive_resumes_to_the_uninterrupted_result(mixed_tar, keys, tmp_path):
    key, _, recipient = keys
    archive = _write(tmp_path, "big.tar.zst.age", _encrypted(mixed_tar, "zstd", recipient))
    clean = verify(archive, state=tmp_path / "clean", identity=key)
    first = cli("verify", archive, "-i", key, "--deadline", "0.1s", "--state-dir", tmp_path / "s", "--no-progress",
                env={"ARCHCHECK_FAILPOINT": "slow-read", "ARCHCHECK_SAVE_INTERVAL": "0.05"})
    assert first.returncode == 3, first.stderr
    result = resume("drill-1", state=tmp_path / "s", identity=key, deadline=unhurried())
    [(_, verification)] = result.verifications
    assert (verification.verdict, members_of(verification)) == ("intact", members_of(clean))


def test_every_read_of_the_plaintext_is_what_age_d_writes(mixed_tar, keys, tmp_path):
    """Reads as the layers make them (in order, small and large, unaligned, jumping back),
    through the read-ahead, against the real tool's output."""
    import random
    from archcheck.layers.age import AgeKey, Plaintext
    from archcheck.sources.local import LocalReader
    key, _, recipient = keys
    archive = _write(tmp_path, "a.tar.zst.age", _encrypted(mixed_tar, "zstd", recipient))
    expected = subprocess.run(["age", "-d", "-i", key, archive], capture_output=True, check=True).stdout
    reader = Plaintext(LocalReader(str(archive)), AgeKey(key.read_text(), "test"))
    assert reader.size == len(expected)
    rnd, pos = random.Random(5), 0
    for _ in range(2000):
        if rnd.random() < 0.3:
            pos = rnd.randrange(len(expected))
        length = rnd.choice([1, 3, 100, CHUNK, CHUNK + 1, 200_000, 3 << 20])
        assert reader.pread(pos, length) == expected[pos:pos + length], (pos, length)
        pos = min(len(expected) - 1, pos + length)
    reader.sweep()
    assert (reader.faults, reader.unread()) == ({}, [])
    reader.close()


@pytest.mark.parametrize("order", [0, 35])
def test_a_resume_past_a_failed_chunk_still_names_its_effects(keys, tmp_path, order):
    """A resume re-walks every frame, so where the failed chunk's frame ends (what its effects
    are gathered up to) is known though the frame's row left in the earlier run: every
    checkpoint after the damage resumes to the uninterrupted findings. Members in the order
    ``Random(35)`` shuffles them to put a frame's end in the chunk's zeros: the frame walk, reading block
    headers in them, ends that frame 8 bytes after them, and the rest of it, up to the next
    frame, is unknown data that the chunk caused too."""
    import random

    from archcheck.layers import age
    from archcheck.layers.stream import StreamCheck
    from archcheck.sources import open_source

    key_file, _, recipient = keys
    tree, rnd = tmp_path / "tree", random.Random(5)
    tree.mkdir()
    for i in range(400):  # text, compressed: a failed chunk's zeros are damage to zstd
        (tree / f"f{i:04d}.txt").write_text("".join(f"row {i} {rnd.random()}\n" for _ in range(rnd.randrange(50, 800))))
    names = sorted(p.name for p in tree.iterdir())
    random.Random(order).shuffle(names)
    data = subprocess.run(["tar", "-cf", "-", "--no-recursion", *maker.TAR_FLAGS, "-C", tree, ".",
                           *[f"./{name}" for name in names]], capture_output=True, check=True).stdout
    piece = 256 * 1024  # frames of 256 KiB, as pzstd writes them
    frames = b"".join(subprocess.run(["zstd", "-q", "-c"], input=data[i:i + piece], capture_output=True,
                                     check=True).stdout for i in range(0, len(data), piece))
    clean = subprocess.run(["age", "-r", recipient], input=frames, capture_output=True, check=True).stdout
    k = 13  # its zeros make the walk go wrong past the chunk's end, inside the same frame
    archive = _write(tmp_path, "frames.tar.zst.age", _flip(clean, _payload_start(clean) + k * SEALED + 60000))
    key = age.AgeKey(key_file.read_text(), "test")

    def run(checkpoint=None, checkpoints=None):
        reader = open_source(archive).ref().open()
        plain = age.Plaintext(reader, key)
        plain.restore((checkpoint or {}).get("age"))
        check = StreamCheck(plain, str(archive), codec="zstd", check_tar=True, threads=2, on_walked=plain.note_frame,
                            on_cut=plain.note_cut, on_members=lambda line, count: plain.note_members(line),
                            resume_from=checkpoint, checkpoint_every=0, checkpoint_from=0,
                            on_checkpoint=(lambda state: checkpoints.append({**json.loads(json.dumps(state)),
                                                                             "age": plain.state()}))
                            if checkpoints is not None else None)
        try:
            return age.conclude(plain, str(archive), check.run(), None)
        finally:
            reader.close()

    checkpoints: list[dict] = []
    whole = run(checkpoints=checkpoints)
    [failed] = [f for f in whole.findings if f.code == "AGE_CHUNK_AUTH"]
    effects = dict(failed.details)["effects"]
    assert corruption(whole) == ["AGE_CHUNK_AUTH"] and all(e.startswith("ZSTD_") for e in effects)
    assert any(e.startswith("ZSTD_BAD_MAGIC") for e in effects) == (order == 35)
    assert failed.location.member is not None
    later = [cp for cp in checkpoints if cp["frame_offset"] > (k + 1) * CHUNK]
    assert len(later) >= 3, "no checkpoints after the damaged frame"
    for checkpoint in later[::len(later) // 3]:
        assert run(checkpoint).findings == whole.findings, checkpoint["frame"]
