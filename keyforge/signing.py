"""Signed manifests: the sending server signs, everyone who trusts an archive checks.

With public-key encryption anyone who knows the recipient can make a valid ciphertext, and
nothing in a synced copy stops its holder from writing a manifest to match. So every manifest
keyforge backup writes carries a detached SSHSIG signature (``layout.signature_path``) made
with the sending server's manifest-signing key, and each run manifest names the sha256 of the
run manifest before it. ``verify_chain`` is the one check restore, verify, drill and snapshot
make: every manifest of a chain signed by a key allowed_signers admits for the host, the same
key from the master on, no run missing between the master and the archive asked for, and every
archive the size and hash its signed manifest records.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from keyforge import layout
from keyforge.config import Config
from keyforge.errors import ConfigError, FileError, KeyMaterialError, SignatureError, UsageError
from keyforge.infra import fsutil
from keyforge.ssh import allowed_signers, keys, sshsig, wire

NAMESPACE = layout.SIGNATURE_NAMESPACE
DEFAULT_KEY_NAME = "manifest-signing-key"


# --- the signing key (sending server) ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """The manifest-signing key, loaded; the private key stays out of ``repr``."""

    path: Path
    public_blob: bytes
    private: object = dataclasses.field(repr=False)

    @property
    def fingerprint(self) -> str:
        return wire.fingerprint(self.public_blob)

    def sign(self, data: bytes) -> bytes:
        return sshsig.sign(self.private, data, NAMESPACE)


def default_key_path(config_path: Path) -> Path:
    """Beside the config file (/etc/keyforge/manifest-signing-key): outside the backup
    directory, and left out of every archive by backup."""
    return config_path.parent / DEFAULT_KEY_NAME


def make_key(comment: str) -> keys.KeyPair:
    return keys.generate("ed25519", comment=comment)


def load_key(path: Path) -> SigningKey:
    """Read the Ed25519 signing key at ``path``; refused when others can read it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as err:
        raise FileError.from_os_error("read the signing key", path, err) from err
    if mode & 0o077:
        raise KeyMaterialError(
            f"signing key {path} has mode {mode:04o}; it must be readable by its owner only "
            f"(chmod 600 {path})"
        )
    try:
        parsed = keys.read_private_key_file(data)
    except KeyMaterialError as err:
        raise KeyMaterialError(f"signing key {path} cannot be used: {err}") from None
    if parsed.algorithm != sshsig.ED25519:
        raise KeyMaterialError(f"signing key {path} is not an Ed25519 key")
    # cryptography's Ed25519 alone: its serialization module would cost every run ~10 ms more
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    point, secret = parsed.fields  # the seed and the point it makes, then the point again
    damaged = KeyMaterialError(
        f"signing key {path} is damaged: its private and public halves differ"
    )
    if len(secret) != 64 or secret[32:] != point:
        raise damaged
    private = ed25519.Ed25519PrivateKey.from_private_bytes(secret[:32])
    made = private.public_key().public_bytes_raw()
    if made != point or parsed.public_blob != sshsig.ed25519_public_blob(made):
        raise damaged
    return SigningKey(path, parsed.public_blob, private)


def check_key_placement(key_path: Path, backup_dir: Path) -> None:
    """The signing key must not lie in the backup directory: sync would send it away."""
    if key_path.absolute().is_relative_to(backup_dir.absolute()):
        raise ConfigError(
            f"[backup] signing_key {key_path} lies inside the backup directory {backup_dir}, "
            "which is pushed offsite; keep it outside (e.g. /etc/keyforge)"
        )


def write_signed(path: Path, data: bytes, key: SigningKey | None) -> None:
    """Write a manifest and, with a key, its signature; without one, no stale signature stays."""
    fsutil.atomic_write(path, data, mode=fsutil.PRIVATE_FILE)
    sig = layout.signature_path(path)
    if key is not None:
        fsutil.atomic_write(sig, key.sign(data), mode=fsutil.PRIVATE_FILE)
    elif sig.exists():
        try:
            sig.unlink()
        except OSError as err:
            raise FileError.from_os_error("remove", sig, err) from err


def signer_line(public_line: str, principal: str) -> str:
    """The allowed_signers line that admits ``public_line`` for ``principal``'s manifests."""
    parsed = keys.parse_public_line(public_line)
    signer = allowed_signers.Signer(
        principals=principal,
        key_type=parsed.algorithm,
        key_blob=parsed.blob,
        namespaces=NAMESPACE,
        comment=parsed.comment,
    )
    return allowed_signers.render(signer)


# --- trust: who may sign (wherever archives are trusted) ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Trust:
    """What a restore checks the manifests against: ``signers``, or None when the user asked
    for an unsigned chain (--insecure-unsigned)."""

    signers: allowed_signers.AllowedSigners | None

    @property
    def insecure(self) -> bool:
        return self.signers is None


INSECURE = Trust(None)
INSECURE_NOTICE = (
    "--insecure-unsigned: the manifests are not checked for signatures; anyone who could write "
    "the backup directory could have written what is restored"
)


def trust_for(config: Config, given: Path | None = None, *, insecure: bool = False) -> Trust:
    """--allowed-signers, else [backup] allowed_signers, else the public half of [backup]
    signing_key (the sending server checking its own backups); --insecure-unsigned says
    explicitly that none is wanted. No signers and no opt-out is refused."""
    if insecure:
        if given is not None:
            raise UsageError("--insecure-unsigned and --allowed-signers exclude each other")
        return INSECURE
    path = given or (Path(config.backup.allowed_signers) if config.backup.allowed_signers else None)
    if path is not None:
        return Trust(allowed_signers.load(path))
    if config.backup.signing_key:
        public = keys.public_path_for(Path(config.backup.signing_key))
        try:
            line = public.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise FileError.from_os_error(
                "read the signing key's public half", public, err
            ) from err
        text = signer_line(line, config.host)
        return Trust(allowed_signers.parse(text, path=str(public)))
    raise SignatureError(
        f"no allowed signers to check {config.host}'s manifests against: give "
        "--allowed-signers FILE (the line 'keyforge pair --signing' printed), or set [backup] "
        "allowed_signers; --insecure-unsigned restores an old, unsigned chain"
    )


# --- checking -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checked:
    """A run manifest whose signature was proved."""

    path: Path
    manifest: layout.Manifest
    sha256: str
    signer: bytes  # the public key blob that signed it


def check_manifest(
    path: Path, principal: str, signers: allowed_signers.AllowedSigners, now: dt.datetime
) -> Checked:
    """Prove ``path``'s signature, by a key ``signers`` admits for ``principal``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{path.name} is missing") from None
    except OSError as err:
        raise FileError.from_os_error("read manifest", path, err) from err
    sig_path = layout.signature_path(path)
    try:
        armored = sig_path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{path.name} is not signed ({sig_path.name} is missing)") from None
    except OSError as err:
        raise FileError.from_os_error("read signature", sig_path, err) from err
    try:
        sig = sshsig.check(armored, data, NAMESPACE)
    except ValueError as err:
        raise SignatureError(f"{path.name} is badly signed: {err}") from None
    if signers.find(principal, NAMESPACE, sig.public_blob, now) is None:
        raise SignatureError(
            f"{path.name} is signed by {sig.fingerprint}, which {signers.path or 'allowed_signers'}"
            f" does not allow to sign {principal}'s manifests"
        )
    manifest = layout.manifest_from_bytes(data, path)  # the bytes signed, not a second read
    if manifest.host != principal:
        raise SignatureError(f"{path.name} is a manifest of {manifest.host}, not {principal}")
    return Checked(path, manifest, hashlib.sha256(data).hexdigest(), sig.public_blob)


def chain_problems(
    backup_dir: Path,
    host: str,
    archives: Sequence[str],
    signers: allowed_signers.AllowedSigners,
    *,
    now: dt.datetime | None = None,
    hash_archives: bool = True,
) -> list[str]:
    """Why the chain ``archives`` (its master first, then incrementals in order) is not
    authentic, each problem naming the archive; empty when it is. See ``verify_chain``."""
    return _check_chain(backup_dir, host, archives, signers, now=now, hash_archives=hash_archives)[
        0
    ]


def _check_chain(
    backup_dir: Path,
    host: str,
    archives: Sequence[str],
    signers: allowed_signers.AllowedSigners,
    *,
    now: dt.datetime | None,
    hash_archives: bool,
) -> tuple[list[str], dict[str, layout.ArchiveEntry]]:
    """The problems of a chain, and the signed entry of each of its archives."""
    when = now or dt.datetime.now(dt.UTC)
    records = layout.archive_records(archives)
    if not records:
        return [], {}
    runs = layout.run_manifests(backup_dir, host)
    checked: dict[str, Checked] = {}
    problems: list[str] = []

    def proved(path: Path) -> Checked:
        if path.name not in checked:
            checked[path.name] = check_manifest(path, host, signers, when)
        return checked[path.name]

    entries: dict[str, layout.ArchiveEntry] = {}
    for record in records:
        path = runs.get(record.stamp)
        try:
            if path is None:
                raise SignatureError(f"no manifest of run {record.stamp}")
            found = proved(path)
        except SignatureError as err:
            problems.append(f"{record.name}: {err}")
            continue
        entry = next((e for e in found.manifest.archives if e.name == record.name), None)
        if entry is None:
            problems.append(f"{record.name}: not listed in its signed manifest {path.name}")
            continue
        entries[record.name] = entry
    if problems:
        return problems, entries
    master, newest = records[0], records[-1]
    problems += _link_problems(backup_dir, runs, (master, newest), proved=proved, entries=entries)
    for record in records:
        entry = entries[record.name]
        if entry.chain != master.name or layout.record_kind(entry.kind) != record.kind:
            problems.append(f"{record.name}: its signed manifest puts it in another chain")
        elif hash_archives:
            problems += _content_problems(backup_dir / record.name, entry)
    return problems, entries


def _link_problems(
    backup_dir: Path,
    runs: dict[str, Path],
    chain: tuple[layout.ArchiveRecord, layout.ArchiveRecord],
    *,
    proved: Callable[[Path], Checked],
    entries: dict[str, layout.ArchiveEntry],
) -> list[str]:
    """Walk the signed ``previous`` links from the newest archive's run back to the master's:
    each run in between must be there, hash as linked, be signed by the master's key, and list
    no archive of this source outside the chain."""
    master, newest = chain
    current = proved(runs[newest.stamp])
    key = proved(runs[master.stamp]).signer
    seen = {current.path.name}
    while True:
        problem = _run_problem(current, key, chain, entries)
        if problem is not None or current.path.name == runs[master.stamp].name:
            return [f"{newest.name}: {problem}"] if problem else []
        link = current.manifest.previous
        if link is None:
            return [f"{newest.name}: {current.path.name} names no earlier run; the chain is cut"]
        if link.name in seen:
            return [f"{newest.name}: the runs' links loop at {link.name}"]
        seen.add(link.name)
        try:
            following = proved(backup_dir / link.name)
        except SignatureError as err:
            return [f"{newest.name}: a run of its chain was removed or altered: {err}"]
        if following.sha256 != link.sha256:
            return [f"{newest.name}: {link.name} is not the run {current.path.name} names"]
        current = following


def _run_problem(
    run: Checked,
    key: bytes,
    chain: tuple[layout.ArchiveRecord, layout.ArchiveRecord],
    entries: dict[str, layout.ArchiveEntry],
) -> str | None:
    """Why one run on the way from the chain's newest archive to its master breaks it."""
    master, newest = chain
    if run.signer != key:
        return (
            f"{run.path.name} is signed by another key than its master {master.name} "
            "(a new signing key starts a new master)"
        )
    for entry in run.manifest.archives:
        found = layout.archive_records([entry.name])
        if (
            found
            and found[0].slug == master.slug
            and entry.name not in entries
            and master.sort_key < found[0].sort_key <= newest.sort_key
        ):
            return f"{entry.name} of its chain is missing"
    return None


def content_problems(backup_dir: Path, entries: Sequence[layout.ArchiveEntry]) -> list[str]:
    """Each archive's size and digest against its signed entry (what ``verify_chain``
    returned), for a caller that hashes beside other work."""
    return [p for e in entries for p in _content_problems(backup_dir / e.name, e)]


def _content_problems(path: Path, entry: layout.ArchiveEntry) -> list[str]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [f"{path.name}: missing"]
    except OSError as err:
        return [f"{path.name}: cannot be read ({err.strerror})"]
    if size != entry.size:
        return [f"{path.name}: {size} bytes where its signed manifest records {entry.size}"]
    if not layout.hash_matches(path, entry):
        return [
            f"{path.name}: its content is not what its signed manifest records ({entry.algorithm})"
        ]
    return []


def verify_chain(
    backup_dir: Path,
    host: str,
    archives: Sequence[str],
    trust: Trust,
    *,
    now: dt.datetime | None = None,
    hash_archives: bool = True,
) -> dict[str, layout.ArchiveEntry]:
    """Verify this chain against these signers: the one check before an archive is trusted.

    ``archives`` is a chain as restore applies it (a master, then incrementals in order).
    Raises SignatureError naming the first archive that is unsigned, badly signed, signed by a
    key ``trust`` does not admit for ``host``, cut from its chain, or not the size and hash
    its signed manifest records. With ``INSECURE`` nothing is checked. Returns each archive's
    signed entry (none with ``INSECURE``); without ``hash_archives`` the caller hashes them
    against it (``content_problems``) before it trusts what it read.
    """
    if trust.signers is None:
        return {}
    problems, entries = _check_chain(
        backup_dir, host, archives, trust.signers, now=now, hash_archives=hash_archives
    )
    refuse(problems)
    return entries


def refuse(problems: Sequence[str]) -> None:
    """The one line a refusal prints: the first problem, and how many more there are."""
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SignatureError(f"refusing {problems[0]}{more}")


def directory_problems(
    backup_dir: Path,
    signers: allowed_signers.AllowedSigners,
    *,
    now: dt.datetime | None = None,
) -> list[str]:
    """Every manifest of a backup directory (index and runs, any host) signed by a key
    ``signers`` admits for its host, and every chain in it whole (sizes and hashes are the
    caller's: snapshot hashes only what is new)."""
    when = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    hosts: set[str] = set()
    for path in sorted(backup_dir.iterdir()):
        name = path.name
        if name != layout.MANIFEST_NAME and not name.endswith(layout.MANIFEST_SUFFIX):
            continue
        try:
            host = layout.load_manifest(path).host
            check_manifest(path, host, signers, when)
        except (SignatureError, FileError) as err:
            problems.append(str(err).removeprefix(f"cannot read manifest {path}: "))
            continue
        if name != layout.MANIFEST_NAME:
            hosts.add(host)
    names = [p.name for p in backup_dir.iterdir()]
    for host in sorted(hosts):
        mine = [r for r in layout.archive_records(names) if r.slug.startswith(f"{host}-")]
        for chain in _chains(mine):
            problems += chain_problems(
                backup_dir, host, chain, signers, now=when, hash_archives=False
            )
    return problems


def _chains(records: Sequence[layout.ArchiveRecord]) -> list[list[str]]:
    """Each master with the incrementals after it, per source (records come sorted)."""
    by_source: dict[str, list[list[str]]] = {}
    for record in records:
        groups = by_source.setdefault(record.slug, [])
        if record.kind == layout.MASTER or not groups:
            groups.append([record.name])
        else:
            groups[-1].append(record.name)
    return [g for groups in by_source.values() for g in groups]
