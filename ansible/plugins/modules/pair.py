#!/usr/bin/python
# Copyright: keyforge developers
# MIT License (see the keyforge project's pyproject.toml)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pair
short_description: The sending server's passphraseless backup key
version_added: "0.1.0"
description:
  - Makes the backup key pair as C(keyforge pair) does, through keyforge's own library on the
    managed node, in the OpenSSH formats C(ssh-keygen) and C(sshd) read. The private key file is
    mode 0600 from its first byte; the public one is 0644.
  - An existing pair is kept (its public line is returned, C(changed=false)); the private half
    is never read, returned or logged.
  - DSA and RSA below 3072 bits are refused.
requirements:
  - keyforge installed in the Python that runs the module (set C(ansible_python_interpreter)
    to keyforge's venv, e.g. C(/opt/keyforge/bin/python)).
options:
  path:
    description:
      - The private key file; the public key goes to the same name plus C(.pub).
      - Default C(~/.ssh/backups) of the user the module runs as.
    type: path
  type:
    description:
      - The key type.
    type: str
    choices: [ed25519, rsa, ecdsa]
    default: ed25519
  bits:
    description:
      - RSA 3072 to 16384 (default 4096), ECDSA 256, 384 or 521 (default 256).
    type: int
  comment:
    description:
      - The key's comment. Default C(user@hostname).
    type: str
  force:
    description:
      - Replace an existing pair (the old key stops working wherever it is installed).
    type: bool
    default: false
notes:
  - Supports C(check_mode); in check mode a missing pair is reported as to be made, and no
    public line is returned for it.
author:
  - keyforge developers (!UNKNOWN)
seealso:
  - module: keyforge.offsite.authorized_key
"""

EXAMPLES = r"""
- name: The backup key of this sending server
  keyforge.offsite.pair:
    path: /root/.ssh/backups
  register: pair

- name: Its line, locked on the receiving host
  keyforge.offsite.authorized_key:
    user: foo
    key: "{{ pair.public_key }}"
    from: ["{{ ansible_default_ipv4.address }}"]
    command: "{{ server_command }}"
  delegate_to: raspberrypi
"""

RETURN = r"""
public_key:
  description: The public key line, as in the C(.pub) file.
  returned: unless check mode had no pair to read
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@server1
fingerprint:
  description: The fingerprint line C(ssh-keygen -lf) prints.
  returned: unless check mode had no pair to read
  type: str
  sample: 256 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU root@server1 (ED25519)
path:
  description: The private key file (its content is never returned).
  returned: always
  type: str
  sample: /root/.ssh/backups
public_path:
  description: The public key file.
  returned: always
  type: str
  sample: /root/.ssh/backups.pub
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

KEYFORGE_IMPORT_ERROR = None
try:
    from pathlib import Path

    from keyforge.errors import KeyforgeError, KeyMaterialError
    from keyforge.ssh import keys
except ImportError:
    KEYFORGE_IMPORT_ERROR = traceback.format_exc()


def existing_public_line(private, public):
    """The public line of a pair already there; refused when only one half is."""
    if not os.path.lexists(private) and not os.path.lexists(public):
        return None
    for half in (private, public):
        if os.path.islink(half) or not os.path.isfile(half):
            raise KeyMaterialError(
                "%s is missing or not a regular file: the pair is incomplete; remove the other "
                "half or set force=true" % half
            )
    with open(public, encoding="utf-8") as handle:
        line = handle.read().strip()
    keys.parse_public_line(line)  # refuses a file that is not one public key
    return line


def run(module):
    params = module.params
    key_type = params["type"]
    bits = keys.resolve_bits(key_type, params["bits"])
    comment = keys.check_comment(
        keys.default_comment() if params["comment"] is None else params["comment"]
    )
    private = Path(params["path"]) if params["path"] else keys.default_key_path()
    public = keys.public_path_for(private)
    output = dict(changed=False, path=str(private), public_path=str(public))
    line = None if params["force"] else existing_public_line(private, public)
    if line is None:
        keys.check_destination(private, force=params["force"])
        output["changed"] = True
        if module.check_mode:
            return output
        made = keys.generate(key_type, bits, comment=comment)
        # the private half never reaches a result, a log or a diff
        module.no_log_values.add(made.private_pem.decode("ascii"))
        written = keys.write_pair(private, made, force=params["force"])
        for text in written.warnings:
            module.warn(text)
        line = made.public_line
    output["public_key"] = line
    output["fingerprint"] = keys.fingerprint(line)
    return output


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            type=dict(type="str", choices=["ed25519", "rsa", "ecdsa"], default="ed25519"),
            bits=dict(type="int"),
            comment=dict(type="str"),
            force=dict(type="bool", default=False),
        ),
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
