"""Programs that run another command (`sudo`, `env`, `bash -c`, `xargs`, `find -exec`, ...)
and programs whose argument is code in another language (`python -c`, `perl -e`, `awk` with
`system`): what each one runs, or why that cannot be known from the text.

Each wrapper's options are read by its own grammar (`Options`): an option a grammar does not
know makes the command opaque, as a guess about whether it takes a value could make the next
word look like the program (`timeout -s KILL 5 rm`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from engine.facts.shell_words import Word, literal, quoted_for_message

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "yash"})
ELEVATING = frozenset({"sudo", "doas", "pkexec", "su", "runuser"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"(python|pypy)[0-9.]*")


@dataclass(frozen=True)
class Options:
    with_arg: str = ""
    """Short options that take a value (attached or the next word)."""
    flags: str = ""
    optional_arg: str = ""
    """Short options whose value, if any, is attached (`xargs -i{}`)."""
    long_with_arg: frozenset[str] = frozenset()
    long_flags: frozenset[str] = frozenset()
    numeric: bool = False
    """`-N` is an option (`nice -10`)."""
    plus: bool = False
    """`+o` style options too (shells)."""
    permute: bool = False
    """Options may follow operands (GNU getopt's default: `su alice -c cmd`)."""


@dataclass
class Parsed:
    options: list[tuple[str, Word | None]] = field(default_factory=list)
    operands: list[Word] = field(default_factory=list)
    rest_at: int = 0
    """Index of the first operand (the end of the options when not permuting)."""


class Opaque(ValueError):
    """What the command runs cannot be known from the text; the message says why (its first
    argument: an `InputReader` when the commands come from the standard input)."""


class InputReader(str):
    """An opaque reason saying the program reads the commands it runs from its standard
    input (a shell, `sudo -i`, `su`, an interpreter without a script): what it runs is typed
    or piped in. On a terminal with nothing else in the text that is an interactive session
    (`engine.facts.ssh.terminal_exec_facts`)."""


def parse_options(program: str, words: list[Word], spec: Options) -> Parsed:
    """Options of `words[1:]` by `spec`; stops at the first operand unless `spec.permute`."""
    out = Parsed()
    i = 1
    while i < len(words):
        value = words[i].value
        if value is None or words[i].glob:
            if spec.permute:
                out.operands.append(words[i])
                i += 1
                continue
            if not value or not value.startswith("-") or words[i].glob:
                break
            raise Opaque(f"an option of {program} is not known until run time")
        if value == "--":
            i += 1
            break
        is_plus = spec.plus and value.startswith("+") and len(value) > 1
        if not (value.startswith("-") and len(value) > 1) and not is_plus:
            if spec.permute:
                out.operands.append(words[i])
                i += 1
                continue
            break
        if value.startswith("--"):
            name, eq, attached = value[2:].partition("=")
            if name in spec.long_flags:
                out.options.append((name, literal(attached) if eq else None))
            elif name in spec.long_with_arg:
                if not eq:
                    i += 1
                    if i >= len(words):
                        raise Opaque(f"{program} {quoted_for_message('--' + name)} lacks its value")
                out.options.append((name, literal(attached) if eq else words[i]))
            else:
                raise Opaque(f"{program} option {quoted_for_message('--' + name)} is not one the "
                            "facts know")
            i += 1
            continue
        if spec.numeric and value[1:].isdigit():
            out.options.append(("n", literal(value[1:])))
            i += 1
            continue
        cluster = value[1:]
        for j, letter in enumerate(cluster):
            if letter in spec.with_arg:
                attached = cluster[j + 1:]
                if not attached:
                    i += 1
                    if i >= len(words):
                        raise Opaque(f"{program} -{letter} lacks its value")
                out.options.append((letter, literal(attached) if attached else words[i]))
                break
            if letter in spec.optional_arg:
                rest = cluster[j + 1:]
                out.options.append((letter, literal(rest) if rest else None))
                break
            if letter in spec.flags:
                out.options.append((letter, None))
                continue
            option = quoted_for_message("-" + letter)
            raise Opaque(f"{program} option {option} is not one the facts know")
        i += 1
    out.rest_at = i
    if not spec.permute:
        out.operands = words[i:]
    else:
        out.operands += words[i:]
    return out


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


SUDO = Options(with_arg="ugCDhpRrtTU", flags="AbBEeHiKklnNPSsVv",
               long_with_arg=_names("user", "group", "close-from", "chdir", "host", "prompt",
                                    "chroot", "role", "type", "other-user", "command-timeout"),
               long_flags=_names("askpass", "background", "bell", "preserve-env", "edit",
                                 "set-home", "login", "remove-timestamp", "reset-timestamp",
                                 "list", "non-interactive", "preserve-groups", "stdin", "shell",
                                 "version", "validate", "help"))
DOAS = Options(with_arg="Cu", flags="nLs")
PKEXEC = Options(long_with_arg=_names("user"), long_flags=_names("disable-internal-agent",
                                                                 "keep-cwd", "help", "version"))
SU = Options(with_arg="cgGsuw", flags="flmpP", permute=True,
             long_with_arg=_names("command", "session-command", "group", "supp-group", "shell",
                                  "whitelist-environment", "user"),
             long_flags=_names("login", "preserve-environment", "fast", "pty", "help"))
ENV = Options(with_arg="uCS", flags="i0v",
              long_with_arg=_names("unset", "chdir", "split-string"),
              long_flags=_names("ignore-environment", "null", "debug", "block-signal",
                                "default-signal", "ignore-signal", "list-signal-handling",
                                "help", "version"))
NICE = Options(with_arg="n", numeric=True, long_with_arg=_names("adjustment"))
TIMEOUT = Options(with_arg="ks", flags="v", long_with_arg=_names("kill-after", "signal"),
                  long_flags=_names("preserve-status", "foreground", "verbose"))
TIME = Options(with_arg="fo", flags="pqav", long_with_arg=_names("format", "output"),
               long_flags=_names("append", "verbose", "portability", "quiet"))
EXEC = Options(with_arg="a", flags="cl")
COMMAND = Options(flags="pvV")
XARGS = Options(with_arg="adEILnPs", flags="0oprtx", optional_arg="eil",
                long_with_arg=_names("arg-file", "delimiter", "eof", "replace", "max-lines",
                                     "max-args", "max-procs", "max-chars", "process-slot-var"),
                long_flags=_names("null", "interactive", "no-run-if-empty", "verbose", "exit",
                                  "open-tty", "show-limits", "help", "version"))
STDBUF = Options(with_arg="ioe", long_with_arg=_names("input", "output", "error"))
SETSID = Options(flags="cfw", long_flags=_names("ctty", "fork", "wait"))
IONICE = Options(with_arg="cnpPu", flags="t",
                 long_with_arg=_names("class", "classdata", "pid", "pgid", "uid"),
                 long_flags=_names("ignore"))
CHROOT = Options(long_with_arg=_names("userspec", "groups"), long_flags=_names("skip-chdir"))
WATCH = Options(with_arg="nq", flags="bcdegtwxpr",
                long_with_arg=_names("interval", "equexit"),
                long_flags=_names("beep", "color", "differences", "errexit", "chgexit",
                                  "no-title", "no-wrap", "exec", "precise", "no-rerun"))
SHELL = Options(with_arg="oO", flags="abcefhiklmnprstuvxBCEHPT", plus=True,
                long_with_arg=_names("rcfile", "init-file"),
                long_flags=_names("login", "noprofile", "norc", "posix", "restricted",
                                  "verbose", "debugger", "dump-strings", "noediting",
                                  "pretty-print", "help", "version"))
TRAP = Options(flags="lp")
SSH = Options(with_arg="BbcDEeFIiJLlmOoPpQRSWw", flags="46AaCfGgKkMNnqsTtVvXxYy")
_SSH_COMMAND_OPTIONS = ("proxycommand", "localcommand", "permitlocalcommand",
                        "knownhostscommand", "remotecommand", "include")
SCRIPT = Options(with_arg="cEIOBTm", flags="aefqkV",
                 long_with_arg=_names("command", "echo", "log-in", "log-out", "log-io",
                                      "log-timing", "logging-format", "output-limit"),
                 long_flags=_names("append", "return", "flush", "force", "quiet"))
NOHUP = Options(long_flags=_names("help", "version"))
PLAIN = Options()


@dataclass
class Unwrapped:
    """What a wrapper runs: another argv (`inner`), shell text (`script`), further commands
    beside itself (`extra`: find -exec), or nothing (`sudo -l`)."""
    inner: list[Word] | None = None
    script: Word | None = None
    extra: list[list[Word]] = field(default_factory=list)
    elevates: bool = False
    program: str | None = None
    """A name the wrapper runs as when it runs no other command (`sudo -e` -> `sudoedit`)."""


RISKY_ASSIGNMENTS = frozenset({
    "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS", "PS4", "IFS",
    "GIT_SSH", "GIT_SSH_COMMAND", "GIT_PAGER", "GIT_EDITOR", "GIT_EXTERNAL_DIFF",
    "GIT_PROXY_COMMAND", "GIT_ASKPASS", "GIT_EXEC_PATH", "GIT_DIR", "GIT_TEMPLATE_DIR",
    "PAGER", "MANPAGER", "SYSTEMD_PAGER", "EDITOR", "VISUAL", "LESSOPEN", "LESSCLOSE",
    "SSH_ASKPASS", "SUDO_ASKPASS", "RSYNC_RSH", "PERL5OPT", "PERL5LIB", "PYTHONSTARTUP",
    "PYTHONPATH", "PYTHONHOME", "NODE_OPTIONS", "RUBYOPT", "RUBYLIB", "TAR_OPTIONS"})
RISKY_PREFIXES = ("LD_", "GIT_CONFIG")
"""Variables that make a shell, the loader or a common program run code the text does not
show (`LD_PRELOAD`, `GIT_SSH_COMMAND`, `PAGER`, `GIT_CONFIG_KEY_0=core.pager`, ...)."""


def risky_assignment(name: str) -> bool:
    return name in RISKY_ASSIGNMENTS or name.startswith(RISKY_PREFIXES)


def _strip_env(words: list[Word]) -> list[Word]:
    """Leading NAME=value words (`sudo FOO=1 cmd`, `env A=b cmd`); a risky one (`env
    LD_PRELOAD=x cmd`) makes the command opaque, as the same assignment before it does."""
    i = 0
    while i < len(words) and words[i].value is not None and _ENV_NAME.match(words[i].value or ""):
        name = (words[i].value or "").partition("=")[0]
        if risky_assignment(name):
            raise Opaque(f"assigning {name} makes the shell or a program run unseen code")
        i += 1
    return words[i:]


def _sudo(program: str, words: list[Word]) -> Unwrapped:
    spec = {"sudo": SUDO, "doas": DOAS, "pkexec": PKEXEC}[program]
    parsed = parse_options(program, words, spec)
    letters = {name for name, _ in parsed.options}
    inner = _strip_env(parsed.operands) if program == "sudo" else parsed.operands
    if letters & {"e", "edit"}:
        return Unwrapped(elevates=True, program="sudoedit")
    if not inner:
        if letters & {"s", "i", "shell", "login"} or program == "pkexec":
            raise Opaque(InputReader(f"{program} opens a shell that reads commands from its input"))
        return Unwrapped(elevates=True)
    return Unwrapped(inner=inner, elevates=True)


def _su(program: str, words: list[Word]) -> Unwrapped:
    parsed = parse_options(program, words, SU)
    values = dict(parsed.options)
    command = values.get("c", values.get("command", values.get("session-command")))
    if program == "runuser" and ("u" in values or "user" in values) and parsed.operands:
        return Unwrapped(inner=parsed.operands, elevates=True)
    if command is not None:
        return Unwrapped(script=command, elevates=True)
    raise Opaque(InputReader(f"{program} opens a shell that reads commands from its input"))


def _env(words: list[Word]) -> Unwrapped:
    parsed = parse_options("env", words, ENV)
    if any(name in ("S", "split-string") for name, _ in parsed.options):
        raise Opaque("env -S splits a string of its own into the command")
    inner = _strip_env(parsed.operands)
    if inner and inner[0].value == "-":  # `env - cmd`: the same as -i
        inner = _strip_env(inner[1:])
    return Unwrapped(inner=inner or None)


def _shell(program: str, words: list[Word]) -> Unwrapped:
    parsed = parse_options(program, words, SHELL)
    letters = {name for name, _ in parsed.options}
    if "c" in letters:
        if not parsed.operands:
            raise Opaque(f"{program} -c lacks its command")
        return Unwrapped(script=parsed.operands[0])
    if "s" in letters or "i" in letters or not parsed.operands:
        raise Opaque(InputReader(f"{program} reads commands from its input"))
    _script_file(program, parsed.operands[0])
    return Unwrapped()  # runs a script file: the program is the shell


STDIN_FILES = frozenset({"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})


def _script_file(program: str, word: Word) -> None:
    """A script file named by `word` is run: one known only at run time (`<(curl ...)`,
    `$F`) or the standard input is text the facts never see."""
    if not word.known:
        raise Opaque(f"the script {program} runs is not known until run time")
    if word.value in STDIN_FILES:
        raise Opaque(InputReader(f"{program} reads commands from its input"))


def _ssh(words: list[Word]) -> Unwrapped:
    """`ssh [options] destination [command ...]`: the command (its words joined, as ssh
    sends them) runs in a shell on that host, maybe this one (`ssh localhost ...`)."""
    parsed = parse_options("ssh", words, SSH)
    for name, value in parsed.options:
        text = (value.value or "") if value is not None else ""
        if name == "o" and (value is None or not value.known or
                            text.replace(" ", "").lower().startswith(_SSH_COMMAND_OPTIONS)):
            raise Opaque("ssh -o runs a local command (ProxyCommand, LocalCommand, ...)")
        if name in ("F", "S", "E") or (name == "o" and "=" not in text and " " not in text):
            raise Opaque(f"ssh -{name} may run commands the facts cannot see")
    if len(parsed.operands) < 2:
        raise Opaque("ssh opens a shell that reads commands from its input")
    return Unwrapped(script=_joined("ssh", parsed.operands[1:]))


def _find(words: list[Word]) -> Unwrapped:
    extra: list[list[Word]] = []
    i = 1
    while i < len(words):
        if words[i].value in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(words) and words[j].value not in (";", "+"):
                j += 1
            if j == i + 1:
                raise Opaque("find -exec lacks its command")
            extra.append(_from_input(words[i + 1:j], ["{}"]))
            i = j
        i += 1
    return Unwrapped(extra=extra)


def _from_input(words: list[Word], placeholders: list[str | None]) -> list[Word]:
    """The words with each one holding a placeholder (`xargs -I{}`, `find -exec {}`) made
    unknown: the program fills it in from its input (a file name, a line) at run time."""
    marks = [p for p in placeholders if p]
    out: list[Word] = []
    for word in words:
        value = word.value or ""
        if any(mark in value for mark in marks):
            pattern = value
            for mark in marks:
                pattern = pattern.replace(mark, "*")
            out.append(Word(None, pattern, word.source, word.glob))
        else:
            out.append(word)
    return out


def _joined(program: str, words: list[Word]) -> Word:
    """The words joined with spaces, as `eval` and `watch` give them to the shell."""
    if not all(w.known for w in words):
        raise Opaque(f"what {program} runs is not known until run time")
    text = " ".join(w.value or "" for w in words)
    return Word(text, text, text)


def _simple(program: str, words: list[Word], spec: Options, positionals: int = 0,
            default: list[Word] | None = None) -> Unwrapped:
    parsed = parse_options(program, words, spec)
    inner = parsed.operands[positionals:]
    if len(parsed.operands) < positionals:
        return Unwrapped()
    return Unwrapped(inner=inner or default)


def unwrap(program: str, words: list[Word]) -> Unwrapped | None:
    """What `words` (whose program is `program`) runs; None if it is not a wrapper."""
    if program in ("sudo", "doas", "pkexec"):
        return _sudo(program, words)
    if program in ("su", "runuser"):
        return _su(program, words)
    if program == "env":
        return _env(words)
    if program in SHELLS:
        return _shell(program, words)
    if program in ("busybox", "toybox"):
        return Unwrapped(inner=words[1:] or None) if len(words) > 1 and \
            not (words[1].value or "-").startswith("-") else Unwrapped()
    if program == "find":
        return _find(words)
    if program == "ssh":
        return _ssh(words)
    if program in ("source", "."):
        if len(words) < 2:
            return Unwrapped()
        _script_file(program, words[1])
        return Unwrapped()
    if program == "eval":
        return Unwrapped(script=_joined(program, words[1:])) if len(words) > 1 else Unwrapped()
    if program == "trap":
        parsed = parse_options(program, words, TRAP)
        if len(parsed.operands) >= 2 and parsed.operands[0].value not in ("-", ""):
            return Unwrapped(script=parsed.operands[0])
        return Unwrapped()
    if program == "watch":
        parsed = parse_options(program, words, WATCH)
        if not parsed.operands:
            return Unwrapped()
        if any(name in ("x", "exec") for name, _ in parsed.options):
            return Unwrapped(inner=parsed.operands)
        return Unwrapped(script=_joined(program, parsed.operands))
    if program == "xargs":
        parsed = parse_options(program, words, XARGS)
        replace = [v.value if v is not None else "{}" for name, v in parsed.options
                   if name in ("I", "i", "replace")]
        return Unwrapped(inner=_from_input(parsed.operands, replace) or None)
    if program == "timeout":
        return _simple(program, words, TIMEOUT, positionals=1)
    if program == "script":
        parsed = parse_options(program, words, SCRIPT)
        command = dict(parsed.options).get("c", dict(parsed.options).get("command"))
        if command is None:
            raise Opaque(InputReader("script opens a shell that reads commands from its input"))
        return Unwrapped(script=command)
    if program == "chroot":
        parsed = parse_options(program, words, CHROOT)
        if len(parsed.operands) == 1:
            raise Opaque(InputReader("chroot without a command opens a shell that reads its input"))
        return Unwrapped(inner=parsed.operands[1:] or None)
    simple = {"nice": NICE, "nohup": NOHUP, "time": TIME, "exec": EXEC, "command": COMMAND,
              "builtin": PLAIN, "stdbuf": STDBUF, "setsid": SETSID, "ionice": IONICE,
              "coproc": PLAIN}
    if program in simple:
        return _simple(program, words, simple[program])
    return None


# Programs whose arguments are code in another language: the facts cannot see what it runs.
_INLINE_CODE = {"perl": "eE", "ruby": "e", "lua": "e", "luajit": "e", "php": "r",
                "node": "ep", "nodejs": "ep", "deno": "", "bun": "e", "expect": "c"}
_INLINE_LONG = frozenset({"--eval", "--print", "--command"})
_INTERPRETERS = frozenset({*_INLINE_CODE, "tclsh", "wish", "expect", "Rscript", "R", "irb",
                           "jshell", "osascript", "pwsh", "powershell", "groovy", "julia"})
_AWK = frozenset({"awk", "gawk", "mawk", "nawk"})
_AWK_FILES = frozenset({"-f", "-i", "-l", "-e", "-E", "-W", "--file", "--include", "--load",
                        "--source", "--exec"})
_AWK_FILES_ATTACHED = ("-f", "-i", "-l", "-e", "-E", "-W", "--file=", "--include=", "--load=",
                       "--source=", "--exec=")
_SED_EXEC = re.compile(r"(^|[;\n{}])\s*(\d+|\$|/[^/\n]*/)?(,(\d+|\$|/[^/\n]*/))?\s*!?\s*e(\s|;|$)")
_SED_S_EXEC = re.compile(r"(^|[;\n{}])\s*s(.)(?:\\.|(?!\2).)*\2(?:\\.|(?!\2).)*\2[gpIiMm0-9w]*e")


# Programs that run a command given as their operands, with option grammars the facts do not
# model: what they run is not unwrapped, so the command line is opaque.
RUNNERS = frozenset({"strace", "ltrace", "gdb", "valgrind", "chrt", "taskset", "numactl",
                     "prlimit", "unshare", "nsenter", "systemd-run", "firejail", "proot",
                     "fakeroot", "fakechroot", "sg", "newgrp", "dbus-launch", "dbus-run-session",
                     "tmux", "screen", "at", "batch", "parallel", "flock", "catchsegv",
                     "torsocks", "proxychains", "proxychains4", "unbuffer", "sshpass", "rlwrap",
                     "faketime", "eatmydata", "cgexec", "runcon", "chronic", "ifne", "entr",
                     "daemonize", "start-stop-daemon", "xterm", "ssh-agent", "su-exec",
                     "gosu", "chpst", "setpriv", "capsh", "softlimit", "envdir", "setuidgid"})
_EDITORS = frozenset({"vi", "vim", "nvim", "ex", "view", "rvim", "vimdiff", "gvim"})
SHELL_ESCAPES = frozenset({*_EDITORS, "ed", "red", "emacs", "emacsclient", "nano", "pico", "joe",
                           "mcedit", "less", "more", "most", "pg", "man", "info", "mc", "ftp",
                           "lftp", "telnet", "mail", "mailx", "mutt", "psql", "mysql",
                           "mariadb", "sqlite3", "visudo", "vipw", "vigr", "sudoedit"})
"""Programs that run commands typed at them (vim `:!`, less `!`, man through its pager, nano
^T, emacs `M-!`, psql and mysql `\\!`, sqlite3 `.shell`), with or without a terminal (vim and
psql read them from a pipe too, psql from `-c` as well): what they run is never in the text."""
_TAR_EXEC = ("to-command", "checkpoint-action", "use-compress-program", "info-script",
             "new-volume-script", "rsh-command")
_TAR_EXEC_SHORT = "IF"
_GIT_EXEC = ("upload-pack", "receive-pack", "exec")


def _long_option(arg: str, names: tuple[str, ...]) -> bool:
    """`arg` is one of the long options `names`, or an abbreviation of one (GNU getopt and
    git accept any unambiguous prefix: `--to-comm=sh` is `--to-command=sh`)."""
    if not arg.startswith("--") or len(arg) < 4:
        return False
    name = arg[2:].partition("=")[0]
    return any(n.startswith(name) for n in names)


def _short(arg: str, letters: str) -> bool:
    """`arg` is a cluster of short options with one of `letters` (`-avessh` holds `-e`)."""
    return arg.startswith("-") and not arg.startswith("--") and any(c in letters
                                                                    for c in arg[1:])


def _tar_runs(args: list[str]) -> bool:
    """A tar option that runs a command, long (abbreviated too) or short, in a cluster
    (`-xI sh`) or in tar's old-style first word (`tar xIf sh a.tar`)."""
    for i, arg in enumerate(args):
        if _long_option(arg, _TAR_EXEC):
            return True
        cluster = arg[1:] if arg.startswith("-") and not arg.startswith("--") else (
            arg if i == 0 and not arg.startswith("-") else "")
        if any(c in _TAR_EXEC_SHORT for c in cluster):
            return True
    return False


def _escape_hatch(program: str, args: list[str]) -> str | None:
    """Options by which a common program runs a command given as text."""
    if program in ("tar", "gtar", "bsdtar") and _tar_runs(args):
        return f"{program} option runs a command (--to-command, --checkpoint-action, -I, ...)"
    if program == "rsync" and "--server" not in args and any(
            _long_option(a, ("rsh", "rsync-path")) or _short(a, "e") for a in args):
        return "rsync -e/--rsh/--rsync-path runs a command"
    if program == "git" and (_git_config(args) or any(_long_option(a, _GIT_EXEC) for a in args)
                             or _git_upload_pack_flag(args)):
        return "git -c and --upload-pack/--exec can run commands (core.pager, alias.x=!...)"
    if program in ("mapfile", "readarray") and any(a.startswith("-C") for a in args):
        return f"{program} -C runs a callback the facts cannot read"
    if program in ("scp", "sftp") and any(_short(a, "SoF") for a in args):
        return f"{program} -S/-o/-F may run a local command"
    if program in ("zip",) and any(a in ("-T", "-TT", "--unzip-command") for a in args):
        return "zip -TT runs a command"
    return None


def _stdin_script(program: str, words: list[Word], arg: str) -> str | None:
    """None for a script file the text names; why not, for one it does not show."""
    word = next((w for w in words[1:] if (w.value or "") == arg), None)
    if word is None or not word.known:
        return f"the script {program} runs is not known until run time"
    if arg in STDIN_FILES:
        return InputReader(f"{program} reads its program from its input")
    return None


def _git_upload_pack_flag(args: list[str]) -> bool:
    """`git clone -u CMD` / `git ls-remote -u CMD`: -u is --upload-pack there (any word
    `clone`, so that `git -C DIR clone -u` is seen too: a false match only makes it opaque)."""
    return any(a in ("clone", "ls-remote") for a in args) and any(
        a.startswith("-u") or (a.startswith("-") and not a.startswith("--") and "u" in a)
        for a in args)


def _git_config(args: list[str]) -> bool:
    """git's global options (before the subcommand) set configuration."""
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if not arg.startswith("-"):
            return False
        if arg in ("-c", "--config-env") or arg.startswith(("--config-env=", "--exec-path")):
            return True
        skip = arg in ("-C", "--git-dir", "--work-tree", "--namespace")
    return False


def opaque_code(program: str, words: list[Word]) -> str | None:
    """Why the command runs code the facts cannot read, or None."""
    args = [w.value or "" for w in words[1:]]
    if program == "alias":
        return "alias makes a later word run another program"
    if program in RUNNERS:
        return f"{program} runs a command the facts do not unwrap"
    if program in SHELL_ESCAPES:
        return f"{program} runs commands typed at it (a shell escape)"
    hatch = _escape_hatch(program, args)
    if hatch is not None:
        return hatch
    if _PYTHON.fullmatch(program):
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg in ("-", "--"):
                return InputReader(f"{program} reads its program from its input")
            if not arg.startswith("-"):
                return _stdin_script(program, words, arg)
            if arg.startswith("--"):
                continue
            for j, letter in enumerate(arg[1:]):
                if letter == "c":
                    return f"{program} -c runs code the facts cannot read"
                if letter == "i":
                    return f"{program} -i reads code from its input"
                if letter == "m":
                    return None  # a module: the program is python
                if letter in "WXQ":
                    skip = not arg[j + 2:]
                    break
        return InputReader(f"{program} reads its program from its input")
    if program in _INTERPRETERS:
        letters = _INLINE_CODE.get(program, "")
        for arg in args:
            if arg in _INLINE_LONG or arg.split("=", 1)[0] in _INLINE_LONG:
                return f"{program} {quoted_for_message(arg)} runs code the facts cannot read"
            if arg.startswith("-") and not arg.startswith("--") and letters and \
                    any(c in letters for c in arg[1:]):
                return f"{program} {quoted_for_message(arg)} runs code the facts cannot read"
            if not arg.startswith("-"):
                return _stdin_script(program, words, arg)
        return InputReader(f"{program} reads its program from its input")
    if program in _AWK:
        if any(a in _AWK_FILES or a.startswith(_AWK_FILES_ATTACHED) for a in args):
            return (f"{program} runs a program file or source the facts cannot read (-f, -i, "
                    "-e, --source, -W, ...)")
        operand = _first_operand(words, with_arg="vF")
        if operand is None:
            return None
        if not operand.known or operand.value is None:
            return f"the program {program} runs is not known until run time"
        if "system" in operand.value or "|" in operand.value:
            return f"{program} program runs commands (system or a pipe)"
        return None
    if program == "sed":
        return _sed(words)
    return None


def _sed(words: list[Word]) -> str | None:
    """Why a sed command line runs commands (its `e` command, `s///e`), or None."""
    options = [w.value for w in words[1:] if w.value and w.value.startswith("-")]
    if any(o.startswith("--file") or (not o.startswith("--") and "f" in o) for o in options):
        return "sed runs a script file or option the facts cannot read (-f, e, s///e)"
    given = [nxt for w, nxt in itertools.pairwise(words) if w.value in ("-e", "--expression")]
    given += [literal((w.value or "")[len("--expression="):]) for w in words
              if (w.value or "").startswith("--expression=")]
    if not given:
        first = _first_operand(words, with_arg="l")
        given = [first] if first is not None else []
    if any(not w.known or w.value is None for w in given):
        return "the script sed runs is not known until run time"
    if any(_SED_EXEC.search(w.value or "") or _SED_S_EXEC.search(w.value or "")
           for w in given):
        return "sed script runs commands (its e command or s///e)"
    return None


def _first_operand(words: list[Word], with_arg: str) -> Word | None:
    """The first operand of an awk/sed command line (its program), skipping options
    (`with_arg`: those that take the next word as their value)."""
    i = 1
    while i < len(words):
        value = words[i].value or ""
        if value == "--":
            i += 1
            break
        if not value.startswith("-") or value == "-":
            break
        if value[1:2] in with_arg and len(value) == 2:
            i += 1
        i += 1
    return words[i] if i < len(words) else None
