#!/usr/bin/python
# Copyright: keyforge developers
# MIT License (see the keyforge project's pyproject.toml)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: authorized_key
short_description: Lock a backup key in authorized_keys to one command from one address
version_added: "0.1.0"
description:
  - Installs or revokes one public key in an OpenSSH C(authorized_keys) file with the same plan
    as C(keyforge install) and C(keyforge revoke), through keyforge's own library on the managed
    node.
  - The line gets C(restrict) and every C(no-*) option, one forced command (an exact
    C(rsync --server) line, or C(keyforge gate) confined to a directory) and a C(from=) list.
  - Every other line, comment and blank line of the file stays byte for byte; a line of another
    key with different C(from=) is never merged with this one.
  - The write is atomic under a lock, keeps the previous file as C(authorized_keys.keyforge-bak),
    and is refused when the file is a symbolic link.
  - A key already on one line with exactly the options asked for is left alone, so a second run
    reports C(changed=false).
requirements:
  - keyforge installed in the Python that runs the module (set C(ansible_python_interpreter)
    to keyforge's venv, e.g. C(/opt/keyforge/bin/python)).
options:
  key:
    description:
      - The public key, one OpenSSH line (C(ssh-ed25519 AAAA... comment)). Options on the line are
        ignored; the module composes them from its own parameters.
    type: str
    required: true
  state:
    description:
      - C(present) installs the locked line (replacing this key's line where it stands);
        C(absent) removes every line of this key.
    type: str
    choices: [present, absent]
    default: present
  user:
    description:
      - The account whose C(~/.ssh/authorized_keys) is managed. Ignored when O(path) is given.
      - Default, the user the module runs as.
    type: str
  path:
    description:
      - The C(authorized_keys) file. A symbolic link is refused.
    type: path
  from:
    description:
      - The addresses or CIDR blocks the key may log in from (C(from=)). Required for
        O(state=present) unless O(any_source=true).
      - Host names never match with sshd's default C(UseDNS no) and get a warning.
    type: list
    elements: str
    aliases: [from_patterns]
  any_source:
    description:
      - Leave C(from=) out on purpose (also needed for a O(from) that admits every address).
    type: bool
    default: false
  command:
    description:
      - The one command the key may run (C(command=)), e.g. the line
        C(keyforge sync --print-server-command) prints on the sending server.
      - With O(gate), the command the gate expects (its C(--expect)).
    type: str
  gate:
    description:
      - Put C(keyforge gate) confined to this directory in C(command=) instead of an exact
        command.
    type: path
  gate_exact:
    description:
      - With O(gate) and O(command), run only exactly that command (C(--exact)).
    type: bool
    default: false
  gate_log:
    description:
      - With O(gate), where the gate logs its decisions (default C(~/.ssh/keyforge/gate.log)).
    type: path
  gate_program:
    description:
      - With O(gate), the receiving host's C(keyforge) program, when it is not the one running
        the module.
    type: str
  allow_unconfined:
    description:
      - With O(gate), accept an rsync without C(--confine-root) (a weaker lock, with a warning).
    type: bool
    default: false
  restrict:
    description:
      - Write C(restrict) (OpenSSH 7.2 and later); false only for older sshd.
    type: bool
    default: true
  expiry_time:
    description:
      - C(expiry-time=), as sshd reads it (C(YYYYMMDD) or C(YYYYMMDDHHMM[SS]), optionally C(Z)).
    type: str
  environment:
    description:
      - C(environment=) assignments, C(NAME=value) (sshd needs C(PermitUserEnvironment)).
    type: list
    elements: str
    default: []
notes:
  - Supports C(check_mode) and C(diff). In check mode nothing is written, not even the lock.
author:
  - keyforge developers (!UNKNOWN)
seealso:
  - module: keyforge.offsite.pair
"""

EXAMPLES = r"""
- name: Lock server1's key to its rsync command, from its address
  keyforge.offsite.authorized_key:
    user: foo
    key: "{{ pair.public_key }}"
    from: ["203.0.113.5"]
    command: "rsync --server -logDtprze.iLsfxCIvu --delete . /home/foo/server1/"
  delegate_to: raspberrypi

- name: The same key behind keyforge gate instead of an exact command
  keyforge.offsite.authorized_key:
    path: /home/foo/.ssh/authorized_keys
    key: "{{ lookup('file', 'server1-backups.pub') }}"
    from: ["203.0.113.5"]
    gate: /home/foo/server1

- name: Revoke it
  keyforge.offsite.authorized_key:
    user: foo
    key: "{{ lookup('file', 'server1-backups.pub') }}"
    state: absent
"""

RETURN = r"""
line:
  description: The line as installed (state=present).
  returned: when state is present
  type: str
  sample: restrict,...,from="203.0.113.5",command="rsync --server ..." ssh-ed25519 AAAA... root@server1
fingerprint:
  description: The key's SHA256 fingerprint, as C(ssh-keygen -lf) prints it.
  returned: always
  type: str
  sample: SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU
plan:
  description: What keyforge's plan does, C(added), C(replaced), C(unchanged), C(removed) or
    C(absent).
  returned: always
  type: str
  sample: added
path:
  description: The authorized_keys file managed.
  returned: always
  type: str
  sample: /home/foo/.ssh/authorized_keys
backup_file:
  description: The copy of the previous file, when one was written.
  returned: when changed and the file existed
  type: str
  sample: /home/foo/.ssh/authorized_keys.keyforge-bak
"""

import os
import pwd
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

KEYFORGE_IMPORT_ERROR = None
try:
    from pathlib import Path

    from keyforge.errors import KeyforgeError
    from keyforge.receiver import install
    from keyforge.ssh import authorized_keys as ak
except ImportError:
    KEYFORGE_IMPORT_ERROR = traceback.format_exc()


def authorized_keys_path(module):
    if module.params["path"]:
        return Path(module.params["path"])
    user = module.params["user"]
    try:
        entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())
    except KeyError:
        module.fail_json(msg="no such user: %s" % user)
    return Path(entry.pw_dir) / ".ssh" / "authorized_keys"


def request_for(module, path, key):
    params = module.params
    return install.InstallRequest(
        key=key,
        authorized_keys=path,
        from_patterns=params["from"] or None,
        any_source=params["any_source"],
        command=params["command"],
        restrict=params["restrict"],
        expiry_time=params["expiry_time"],
        environment=tuple(params["environment"] or ()),
        gate=Path(params["gate"]) if params["gate"] else None,
        exact=params["gate_exact"],
        gate_log=Path(params["gate_log"]) if params["gate_log"] else None,
        gate_program=params["gate_program"],
        allow_unconfined=params["allow_unconfined"],
    )


def run(module):
    path = authorized_keys_path(module)
    key = install.public_key_from_text(module.params["key"], source="key")
    bare = ak.Entry(key.keytype, key.blob, key.comment, ())
    if module.params["state"] == "absent":
        result = install.revoke_key(path, bare, dry_run=module.check_mode)
        line = None
        warnings = result.warnings
    else:
        done = install.perform_install(
            request_for(module, path, bare), dry_run=module.check_mode
        )
        result = done.result
        line = done.result.plan.line
        warnings = (*result.warnings, *(n.text for n in done.notes if n.warning))
    plan = result.plan
    for text in dict.fromkeys(warnings):
        module.warn(text)
    output = dict(
        changed=plan.changed,
        plan=plan.action,
        path=str(path),
        fingerprint=key.fingerprint(),
    )
    if line is not None:
        output["line"] = line
    if result.backup is not None:
        output["backup_file"] = str(result.backup)
    if module._diff:
        output["diff"] = dict(
            before=plan.old_text or "",
            after=plan.new_text if plan.new_text is not None else (plan.old_text or ""),
            before_header=str(path),
            after_header=str(path),
        )
    return output


# a dict display, since "from" is a Python keyword and cannot be a dict() argument
ARGUMENT_SPEC = {
    "key": dict(type="str", required=True, no_log=False),
    "state": dict(type="str", choices=["present", "absent"], default="present"),
    "user": dict(type="str"),
    "path": dict(type="path"),
    "from": dict(type="list", elements="str", aliases=["from_patterns"]),
    "any_source": dict(type="bool", default=False),
    "command": dict(type="str"),
    "gate": dict(type="path"),
    "gate_exact": dict(type="bool", default=False),
    "gate_log": dict(type="path"),
    "gate_program": dict(type="str"),
    "allow_unconfined": dict(type="bool", default=False),
    "restrict": dict(type="bool", default=True),
    "expiry_time": dict(type="str"),
    "environment": dict(type="list", elements="str", default=[]),
}


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("user", "path")],
        required_if=[("gate_exact", True, ("gate", "command"))],
        supports_check_mode=True,
    )
    if KEYFORGE_IMPORT_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib(
                "keyforge", reason="set ansible_python_interpreter to keyforge's Python"
            ),
            exception=KEYFORGE_IMPORT_ERROR,
        )
    try:
        output = run(module)
    except KeyforgeError as err:
        module.fail_json(msg=str(err), exit_code=err.exit_code)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
