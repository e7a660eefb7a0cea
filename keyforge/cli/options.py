"""The options several commands share, declared once so their spelling, short form and help
cannot drift apart, and what their values mean (a config loaded, a key read, a default file).

Short options mean one thing on every command: ``-c`` is ``--config``, ``-t`` is ``--target``,
``-k`` is ``--key``, ``-f`` is ``--authorized-keys``. Where an older release gave one of them
another meaning on one command, :func:`deprecated_spelling` keeps it working for one release.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keyforge.cli.output import warn
from keyforge.errors import UsageError

if TYPE_CHECKING:
    from keyforge.config import Config
    from keyforge.sender.pipeline import Identity
    from keyforge.signing import Trust
    from keyforge.ssh.authorized_keys import Entry

_CONFIG_HELP = "The config file. Default: $KEYFORGE_CONFIG, else /etc/keyforge/keyforge.toml."
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", metavar="PATH", help=_CONFIG_HELP, show_default=False),
]

VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Print what the run did on stdout even when all went well outside a terminal "
        "(by default a scheduled run prints nothing on success, so cron has nothing to mail).",
    ),
]

_KEY_HELP = (
    "The backup key's PUBLIC half: a .pub file holding one line 'type base64 comment', or - to "
    "read it from standard input. A private key is refused."
)

_AUTHORIZED_KEYS_HELP = (
    "The authorized_keys file to edit. Default: ~/.ssh/authorized_keys of the user running "
    "keyforge (run it as the user the backups log in as)."
)


CAPTURE_LOG_HELP = (
    "The capture log. Default: ~/.ssh/keyforge/capture.log in the home of the authorized_keys "
    "file's user."
)


# Options whose spelling is shared but whose help says what they do for each command.


def dry_run(help_text: str) -> Any:
    return typer.Option("--dry-run", help=help_text)


def target(help_text: str) -> Any:
    return typer.Option("--target", "-t", metavar="NAME", show_default=False, help=help_text)


def as_json(help_text: str) -> Any:
    return typer.Option("--json", help=help_text)


def key(help_text: str) -> Any:
    return typer.Option("--key", "-k", metavar="PUBFILE|-", show_default=False, help=help_text)


def authorized_keys(help_text: str) -> Any:
    return typer.Option(
        "--authorized-keys",
        "-f",
        metavar="PATH",
        show_default=False,
        help=help_text,
        readable=False,  # keyforge's own one-line error says why
    )


# install, revoke and capture start: the key and the file they edit
KeyOption = Annotated[str, key(_KEY_HELP)]
AuthorizedKeysOption = Annotated[Path | None, authorized_keys(_AUTHORIZED_KEYS_HELP)]

DiffDryRunOption = Annotated[bool, dry_run("Print the change as a unified diff; write nothing.")]

_IDENTITY_HELP = (
    "The age identity that opens encrypted archives: a file 'keyforge keygen-age' or "
    "'age-keygen' made, or an OpenSSH private key whose public key is in encrypt_to. Only its "
    "name is given to age, never its content."
)
# restore, verify and every command reading encrypted archives
IdentityOption = Annotated[
    Path | None,
    typer.Option("--identity", metavar="FILE", show_default=False, help=_IDENTITY_HELP),
]


# restore, list, find, verify and drill: backups read where they are, with no config
FromOption = Annotated[
    Path | None,
    typer.Option(
        "--from",
        metavar="DIR",
        show_default=False,
        help="Read the backups in DIR (a synced copy or one of its snapshots) with no config "
        "file: the host and the sources come from the manifests there. Nothing is written "
        "into DIR.",
    ),
]
HostOption = Annotated[
    str | None,
    typer.Option(
        "--host",
        metavar="NAME",
        show_default=False,
        help="With --from: whose backups to read. Default: the only host with manifests there.",
    ),
]


# --- what the values mean ------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    from keyforge import config

    return config.load(config.resolve_path(path))


def load_backups(path: Path | None, from_dir: Path | None, host: str | None) -> Config:
    """The config a reading command works with: the backups in ``from_dir`` as they are, or
    the config file's."""
    if from_dir is None:
        if host is not None:
            raise UsageError("--host goes with --from (a config file names its own host)")
        return load_config(path)
    if path is not None:
        raise UsageError("--from reads the backups without a config file; drop --config")
    from keyforge.sender import catalog

    return catalog.copy_config(from_dir, host)


def load_identity(path: Path | None) -> Identity | None:
    """The identity an ``--identity FILE`` option names (warned about when others may read it)."""
    if path is None:
        return None
    from keyforge.sender import pipeline

    identity = pipeline.load_identity(path)
    for message in identity.warnings:
        warn(message)
    return identity


def authorized_keys_path(option: Path | None) -> Path:
    from keyforge.receiver import install

    return option if option is not None else install.default_authorized_keys()


def read_key(spec: str) -> Entry:
    """The public key a ``--key PUBFILE|-`` option names."""
    from keyforge.receiver import install

    if spec == "-":
        return install.public_key_from_text(sys.stdin.read(), source="<stdin>")
    return install.read_public_key(Path(spec))


# what each short option means everywhere, for the warning about an old spelling
_SHORT_MEANING = {"-c": "--config", "-t": "--target"}


def deprecated_spelling(
    ctx: typer.Context, *, old: str, new: str, param: str, old_value: Any, value: Any
) -> Any:
    """The value of an option an older release also spelt ``old``, kept for one release.

    ``param`` names the parameter of the current spelling ``new``: given both ways at once is
    a usage error, given the old way only gets a warning on stderr.
    """
    if old_value is None:
        return value
    source = ctx.get_parameter_source(param)
    if source is not None and source.name == "COMMANDLINE":
        raise UsageError(f"{old} and {new} are the same option here; give {new}")
    warn(
        f"'keyforge {ctx.info_name} {old}' is deprecated and stops working in the next "
        f"release: write {new} ({old} means {_SHORT_MEANING[old]} on every other command)"
    )
    return old_value


def split_patterns(values: list[str] | None) -> list[str] | None:
    """--from: each value may hold several patterns, comma-separated."""
    return [pattern for value in values for pattern in value.split(",")] if values else None


AllowedSignersOption = Annotated[
    Path | None,
    typer.Option(
        "--allowed-signers",
        metavar="FILE",
        show_default=False,
        help="Who may sign the manifests (OpenSSH allowed_signers: the line 'keyforge pair "
        "--signing' printed). Default: [backup] allowed_signers, else the public half of "
        "[backup] signing_key. Every manifest of the chain must be signed by a key it allows "
        "for the host.",
    ),
]
InsecureUnsignedOption = Annotated[
    bool,
    typer.Option(
        "--insecure-unsigned",
        help="Trust an old, unsigned chain: no signature is checked, and keyforge says so. "
        "Anyone who could write the backup directory could have written what is restored.",
    ),
]


def trust(config: Config, allowed: Path | None, *, insecure: bool) -> Trust:
    """The signers a restore checks against; the warning --insecure-unsigned earns."""
    from keyforge import signing

    found = signing.trust_for(config, allowed, insecure=insecure)
    if found.insecure:
        warn(signing.INSECURE_NOTICE)
    return found
