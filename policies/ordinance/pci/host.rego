# PCI DSS guard rails for hosts reached over SSH (and shell commands): what a command line
# runs is read from the shell facts (engine/facts/shell.py: every command after unwrapping
# sudo/env/sh -c/..., `opaque` when the text cannot show it) and the SSH request facts
# (engine/facts/ssh.py: interactive shells, SFTP operations, forwarding). Each rule names the
# requirement it serves; policies/README.md has the full map.
package ordinance.pci.host

import rego.v1

host := data.settings.pci.host

prod if input.resource.labels.env == "prod"

is_host if input.command.protocol in {"ssh", "shell"}

commands contains c if {
	is_host
	some c in input.command.commands
}

# Req 6.5.1: destructive changes to production hosts follow change control.
deny contains msg if {
	prod
	some c in commands
	c.program == "rm"
	some arg in c.argv
	recursive_flag(arg)
	msg := "recursive rm is not allowed on production hosts (PCI DSS 6.5.1)"
}

# `rm $OPTS /srv` (OPTS=-rf) or `rm *` beside a file named `-rf`: options known only at run time.
deny contains msg if {
	prod
	some c in commands
	c.program == "rm"
	c.args_may_be_options == true
	msg := "rm with arguments known only at run time (they could be -r) is not allowed on production hosts (PCI DSS 6.5.1)"
}

recursive_flag(arg) if regex.match(`^-[a-zA-Z]*[rR]`, arg)

recursive_flag("--recursive")

deny contains msg if {
	prod
	some c in commands
	c.program == "find"
	"-delete" in c.argv
	msg := "find -delete is not allowed on production hosts (PCI DSS 6.5.1)"
}

deny contains msg if {
	prod
	some c in commands
	is_string(c.program)
	some pattern in host.filesystem_programs
	glob.match(pattern, [], c.program)
	msg := concat("", [c.program, " (making or wiping a filesystem) is not allowed on production hosts (PCI DSS 6.5.1)"])
}

# dd writing a device, or a target the text does not show (`of=$DISK`).
deny contains msg if {
	prod
	some c in commands
	c.program == "dd"
	some arg in c.argv
	startswith(arg, "of=")
	risky_target(substring(arg, 3, -1))
	msg := "dd of=/dev/... is not allowed on production hosts (PCI DSS 6.5.1)"
}

risky_target(target) if contains(target, "dev/")

risky_target(target) if regex.match("[$`*?\\[{]", target)

# Programs that write or wipe a disk named as an argument (`cp img /dev/sda`, `blkdiscard`).
deny contains msg if {
	prod
	some c in commands
	c.program in host.device_writers
	some arg in array.slice(c.argv, 1, count(c.argv))
	some device in host.block_devices
	glob.match(device, [], arg)
	msg := concat("", [c.program, " on ", arg, " is not allowed on production hosts (PCI DSS 6.5.1)"])
}

# A redirection that writes a device (`> /dev/sda`), in any command of the text.
deny contains msg if {
	prod
	is_host
	some r in input.command.redirects
	r.op in {">", ">>", ">|", "&>", "&>>", "<>"}
	is_string(r.path)
	startswith(r.path, "/dev/")
	not harmless_device(r.path)
	msg := concat("", ["writing ", r.path, " is not allowed on production hosts (PCI DSS 6.5.1)"])
}

harmless_device(path) if path in host.harmless_devices

harmless_device(path) if startswith(path, "/dev/fd/")

# Req 6.5.1 / 10.7: stopping a production host is a change, and takes its controls down.
deny contains msg if {
	prod
	some c in commands
	c.program in host.power_programs
	msg := concat("", [c.program, " is not allowed on production hosts (PCI DSS 6.5.1)"])
}

deny contains msg if {
	prod
	some c in commands
	c.program == "systemctl"
	some arg in c.argv
	arg in host.systemctl_power_verbs
	msg := concat("", ["systemctl ", arg, " is not allowed on production hosts (PCI DSS 6.5.1)"])
}

# `kill 1` (init) and the kernel's sysrq trigger (`echo b > /proc/sysrq-trigger`) stop a host too.
deny contains msg if {
	prod
	some c in commands
	c.program in {"kill", "pkill", "killall"}
	some arg in array.slice(c.argv, 1, count(c.argv))
	arg in {"1", "init", "systemd"}
	msg := concat("", [c.program, " ", arg, " (the init process) is not allowed on production hosts (PCI DSS 6.5.1)"])
}

deny contains msg if {
	prod
	is_host
	some r in input.command.redirects
	r.path == "/proc/sysrq-trigger"
	msg := "writing /proc/sysrq-trigger is not allowed on production hosts (PCI DSS 6.5.1)"
}

deny contains msg if {
	prod
	some c in commands
	c.program in {"init", "telinit"}
	some arg in c.argv
	arg in {"0", "6"}
	msg := concat("", [c.program, " ", arg, " is not allowed on production hosts (PCI DSS 6.5.1)"])
}

# Req 6.3.3 / 6.5.1: removing packages from a production host (security components among
# them) goes through change control.
deny contains msg if {
	prod
	some c in commands
	removal := host.package_removal[c.program]
	some arg in array.slice(c.argv, 1, count(c.argv))
	regex.match(removal, arg)
	msg := concat("", [c.program, " ", arg, " (package removal) is not allowed on production hosts (PCI DSS 6.3.3, 6.5.1)"])
}

# Req 3.6.1 / 8.3.2: cryptographic keys and password hashes are not read (or written) by
# people on production hosts: any word of the command line, or an SFTP path, naming them.
deny contains msg if {
	prod
	is_host
	some path in input.command.paths
	key_material(path)
	msg := concat("", [path, " is key material: access is not allowed on production hosts (PCI DSS 3.6.1, 8.3.2)"])
}

key_material(path) if {
	some pattern in host.key_material_paths
	regex.match(pattern, path)
	not endswith(path, ".pub")
}

# `getent shadow` reads the password hashes through NSS without naming the file.
deny contains msg if {
	prod
	some c in commands
	c.program == "getent"
	some arg in c.argv
	arg in {"shadow", "gshadow"}
	msg := concat("", ["getent ", arg, " reads password hashes: not allowed on production hosts (PCI DSS 8.3.2)"])
}

# A word known only at run time (`$HOME/.ssh/id_rsa`, `/etc/sha*`) that could name key material.
deny contains msg if {
	prod
	is_host
	some pattern in input.command.path_patterns
	some probe in host.key_material_probes
	glob.match(pattern, [], probe)
	msg := concat("", [pattern, " may name key material (", probe, "): access is not allowed on production hosts (PCI DSS 3.6.1, 8.3.2)"])
}

# Req 6.2.4: what cannot be checked is refused: text the facts cannot parse, or that runs
# what they cannot know (a program named by a variable, `python -c`, a shell reading its input).
deny contains msg if {
	prod
	is_host
	input.command.parse_error != null
	msg := concat("", ["an unparseable command line is denied on production hosts: ", input.command.parse_error, " (PCI DSS 6.2.4)"])
}

deny contains msg if {
	prod
	is_host
	input.command.opaque == true
	some reason in input.command.opaque_reasons
	msg := concat("", ["a command line that runs what cannot be checked is denied on production hosts: ", reason, " (PCI DSS 6.2.4)"])
}

# Req 1.3.1 / 1.3.2: port and agent forwarding open network paths around the controls;
# denied everywhere unless `allowed_forwarding` names the kind.
deny contains msg if {
	is_host
	input.command.request == "forward"
	kind := input.command.forward.kind
	not kind in host.allowed_forwarding
	msg := concat("", [kind, " forwarding is not allowed (PCI DSS 1.3.1, 1.3.2)"])
}

# Req 2.2.4: subsystems other than SFTP are functionality nobody asked for.
deny contains msg if {
	is_host
	input.command.request == "subsystem"
	msg := "SSH subsystems other than sftp are not allowed (PCI DSS 2.2.4)"
}

# Req 7.2.1 / 10.2.1.2: an interactive shell on a production host runs commands no policy
# sees one by one: a second person approves it, for a time window.
review contains {"msg": msg, "approvers": host.approvers, "window": host.shell_window, "rule": "interactive_shell"} if {
	prod
	is_host
	input.command.interactive == true
	msg := "an interactive shell on a production host needs approval (PCI DSS 7.2.1, 10.2.1.2)"
}

# Req 7.2.2 / 10.2.1.2: administrative (root) actions on production hosts are approved.
review contains {"msg": msg, "approvers": host.approvers, "rule": "sudo"} if {
	prod
	some c in commands
	c.sudo == true
	msg := concat("", [c.program, " as root (sudo) on a production host needs approval (PCI DSS 7.2.2, 10.2.1.2)"])
}
