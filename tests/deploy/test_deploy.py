"""deploy/: the compose file, the Kubernetes manifests, the Dockerfiles and the SLURM batch
scripts agree with the code.

No Docker engine or Kubernetes cluster runs where the tests run, so these files are checked,
not started: they parse; every ``pbt``/``pbt-worker``/``pbt-arbiter`` command line they hold
parses with the real argparse parsers of ``pbt_mq/cli`` (exact flag names, no
abbreviations); every ``PBT_*`` variable they set is one the package reads; every image,
volume, env file, Secret/ConfigMap key and COPY source they name exists; the batch scripts pass
``bash -n`` and put every ``#SBATCH`` line where sbatch reads it. The checkers are
also run on small broken snippets, so a test that cannot fail would show. ``pbt health``
(the probes' command) is tested against a real Redis at the end.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import io
import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from pbt_mq.cli import daemons, options
from pbt_mq.cli import pbt as main
from pbt_mq.core import settings
from pbt_mq.core.keys import worker_key

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SLURM = DEPLOY / "slurm"
PROGS = {"pbt": main.build_pbt_parser, "pbt-worker": daemons.build_worker_parser, "pbt-arbiter": daemons.build_arbiter_parser}
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "`"}


# ---------------------------------------------------------------- the checkers


def known_env_vars() -> set[str]:
    """Every PBT_* name the package reads: string constants that are exactly such a name
    (``env("PBT_QUEUE")``, ``os.environ.get("PBT_S3_ACCESS_KEY")``), not mentions in help text."""
    names = set()
    for path in (ROOT / "pbt_mq").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"PBT_[A-Z0-9_]+", node.value):
                names.add(node.value)
    return names


KNOWN_ENV = known_env_vars()


def _subparsers(p: Any) -> dict[str, Any]:
    for action in p._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def check_argv(argv: list[str]) -> list[str]:
    """Errors in one pbt / pbt-worker / pbt-arbiter command line, judged by the real parsers."""
    prog = Path(argv[0]).name
    if prog not in PROGS:
        return [f"{argv[0]}: not a pbt-mq program ({', '.join(PROGS)})"]
    parser, rest, where = PROGS[prog](), list(argv[1:]), prog
    subs = _subparsers(parser)
    if subs:
        if not rest or rest[0] not in subs:
            return [f"{' '.join(argv)}: {prog} has no subcommand {rest[0] if rest else '(none)'!r}"]
        where = f"{prog} {rest[0]}"
        sub, args = subs[rest[0]], rest[1:]
    else:
        sub, args = parser, rest
    errors = []
    for tok in args:
        if tok == "--":
            break
        if tok.startswith("-") and len(tok) > 1 and not re.fullmatch(r"-\d+(\.\d*)?", tok):
            flag = tok.split("=", 1)[0]
            if flag not in sub._option_string_actions:  # exact: argparse would accept an abbreviation
                errors.append(f"{' '.join(argv)}: {where} has no option {flag}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(rest)
        except SystemExit as exc:
            if exc.code:
                errors.append(f"{' '.join(argv)}: does not parse: {err.getvalue().strip()}")
    return errors


def shell_commands(script: str, compose: bool = False) -> list[list[str]]:
    """The pbt-mq command lines inside a shell script (``$$`` is compose's escaped ``$``)."""
    if compose:
        script = script.replace("$$", "$")
    script = script.replace("\\\n", " ")
    found = []
    for line in script.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            tokens = list(lex)
        except ValueError:  # an unterminated quote in a heredoc body: not a command line
            continue
        cur: list[str] | None = None
        at_start = True  # in command position: the first word of a command
        for tok in tokens:
            if tok in SHELL_SEPARATORS:
                if cur:
                    found.append(cur)
                cur, at_start = None, True
            elif cur is not None:
                cur.append(tok)
            elif at_start and Path(tok).name in PROGS:
                cur = [tok]
            elif at_start and (tok in ("exec", "env", "time", "!") or re.fullmatch(r"[A-Za-z_]\w*=.*", tok)):
                continue  # still in command position: `exec pbt ...`, `X=1 pbt ...`
            else:
                at_start = False
        if cur:
            found.append(cur)
    return found


def argv_commands(argv: list[str], compose: bool = False) -> list[list[str]]:
    """pbt-mq command lines in one exec-form command (directly, or inside ``sh -c``)."""
    if not argv:
        return []
    if Path(argv[0]).name in SHELLS and "-c" in argv:
        i = argv.index("-c")
        return shell_commands(argv[i + 1], compose) if i + 1 < len(argv) else []
    if Path(argv[0]).name in PROGS:
        return [argv]
    return []


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def dockerfile_cmd(path: Path) -> list[str]:
    for line in reversed(dockerfile_lines(path)):
        if line.upper().startswith("CMD "):
            return json.loads(line[4:])
    return []


def dockerfile_lines(path: Path) -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        out.append((cur + s).strip())
        cur = ""
    return out


def compose_build(svc: dict, base: Path) -> Path | None:
    b = svc.get("build")
    if b is None:
        return None
    if isinstance(b, str):
        return (base / b / "Dockerfile").resolve()
    return (base / b.get("context", ".") / b.get("dockerfile", "Dockerfile")).resolve()


def compose_service_argvs(svc: dict, base: Path) -> list[list[str]]:
    """What a service runs: entrypoint + command, or its Dockerfile's CMD; then its healthcheck."""
    entry, command = as_list(svc.get("entrypoint")), as_list(svc.get("command"))
    if not entry and not command and compose_build(svc, base):
        command = dockerfile_cmd(compose_build(svc, base))
    argvs = [entry + command]
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        argvs.append(["sh", "-c", test])
    elif test and test[0] == "CMD":
        argvs.append(list(test[1:]))
    elif test and test[0] == "CMD-SHELL":
        argvs.append(["sh", "-c", test[1]])
    return argvs


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            k, _, v = s.partition("=")
            out[k.strip()] = v.strip()
    return out


def env_file_path(name: str, base: Path) -> Path:
    """An env file compose reads; the repository holds its ``.example`` (the real one is git-ignored)."""
    p = base / name
    return p if p.exists() else p.with_name(p.name + ".example")


def compose_env(svc: dict, base: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for f in as_list(svc.get("env_file")) if not isinstance(svc.get("env_file"), list) else svc["env_file"]:
        f = f["path"] if isinstance(f, dict) else f
        if env_file_path(f, base).exists():
            env.update(read_env_file(env_file_path(f, base)))
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.partition("=")[::2] for item in e)
    env.update({k: str(v) for k, v in e.items()})
    return env


def compose_problems(doc: dict, base: Path = DEPLOY) -> list[str]:
    """Everything that is wrong with a compose file, as lines (empty: nothing)."""
    problems = []
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    secrets = set((doc.get("secrets") or {}).keys())
    built = {}  # image name -> Dockerfile
    for name, svc in services.items():
        df = compose_build(svc, base)
        if df is not None:
            if not df.exists():
                problems.append(f"{name}: builds from {df}, which does not exist")
            if svc.get("image"):
                built[svc["image"]] = df
    for name, svc in services.items():
        for argv in compose_service_argvs(svc, base):
            for cmd in argv_commands(argv, compose=True):
                problems += [f"{name}: {e}" for e in check_argv(cmd)]
        env = compose_env(svc, base)
        problems += [f"{name}: sets {k}, which pbt-mq never reads" for k in env if k.startswith("PBT_") and k not in KNOWN_ENV]
        ef = svc.get("env_file") or []
        for f in [ef] if isinstance(ef, str) else ef:
            f = f["path"] if isinstance(f, dict) else f
            if not env_file_path(f, base).exists():
                problems.append(f"{name}: env_file {f} (nor {f}.example) does not exist")
        image = svc.get("image", "")
        if image.startswith("pbt-mq-") and image not in built:
            problems.append(f"{name}: image {image} is built by no service from a Dockerfile")
        for v in svc.get("volumes") or []:
            src = v.get("source") if isinstance(v, dict) else v.split(":", 1)[0]
            kind = v.get("type", "volume") if isinstance(v, dict) else ("bind" if src.startswith((".", "/", "~")) else "volume")
            if kind == "volume" and src not in volumes:
                problems.append(f"{name}: volume {src} is not declared under volumes:")
            if kind == "bind" and not (base / src).exists():
                problems.append(f"{name}: bind mount {src} does not exist")
        for s in svc.get("secrets") or []:
            s = s["source"] if isinstance(s, dict) else s
            if s not in secrets:
                problems.append(f"{name}: secret {s} is not declared under secrets:")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                problems.append(f"{name}: depends on {dep}, which is no service")
    return problems


def dockerignore_admits(ignore: Path, rel: str) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for line in ignore.read_text().splitlines():
        pat = line.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            admitted = neg
    return admitted


def dockerfile_problems(path: Path, context: Path = ROOT) -> list[str]:
    problems = []
    ignore = path.with_name(path.name + ".dockerignore")
    for line in dockerfile_lines(path):
        if line.split(" ", 1)[0].upper() not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
        for src in words[:-1]:
            matches = sorted(context.glob(src))
            if not matches:
                problems.append(f"{path.name}: COPY {src}: nothing in the build context matches")
            for m in matches:
                rel = m.relative_to(context).as_posix()
                if ignore.exists() and not dockerignore_admits(ignore, rel):
                    problems.append(f"{path.name}: COPY {src}: {rel} is excluded by {ignore.name}")
    return problems


def pip_installs(path: Path) -> list[str]:
    """The arguments of every ``pip install`` in a Dockerfile's RUN instructions."""
    out = []
    for line in dockerfile_lines(path):
        if line.upper().startswith("RUN "):
            out += [m.strip() for m in re.findall(r"pip install ([^&|;]+)", line)]
    return out


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def k8s_problems(docs: list[dict]) -> list[str]:
    """Everything that is wrong with a set of manifests, as lines (empty: nothing)."""
    problems = []
    secrets = {d["metadata"]["name"]: set(d.get("data") or {}) | set(d.get("stringData") or {})
               for d in docs if d["kind"] == "Secret"}
    maps = {d["metadata"]["name"]: dict(d.get("data") or {}) for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            sel = d["spec"]["selector"]["matchLabels"]
            labels = d["spec"]["template"]["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in sel.items()):
                problems.append(f"{d['kind']}/{d['metadata']['name']}: selector {sel} does not match template labels {labels}")
        if d["kind"] == "ConfigMap":
            problems += [f"ConfigMap/{d['metadata']['name']}: {k}, which pbt-mq never reads"
                         for k in d.get("data") or {} if k.startswith("PBT_") and k not in KNOWN_ENV]
    for where, spec in pod_specs(docs):
        pod_volumes = {v["name"] for v in spec.get("volumes") or []}
        for c in spec["containers"] + (spec.get("initContainers") or []):
            here = f"{where} {c['name']}"
            defined: set[str] = set()
            for ef in c.get("envFrom") or []:
                ref = ef.get("configMapRef") or ef.get("secretRef")
                pool = maps if "configMapRef" in ef else secrets
                if ref["name"] not in pool:
                    problems.append(f"{here}: envFrom {ref['name']}, which no manifest defines")
                else:
                    defined |= set(pool[ref["name"]])
            for e in c.get("env") or []:
                name = e["name"]
                if name.startswith("PBT_") and name not in KNOWN_ENV:
                    problems.append(f"{here}: sets {name}, which pbt-mq never reads")
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                    if var not in defined:
                        problems.append(f"{here}: {name} uses $({var}), which is not defined before it")
                src = e.get("valueFrom") or {}
                for kind, pool in (("secretKeyRef", secrets), ("configMapKeyRef", maps)):
                    ref = src.get(kind)
                    if ref and ref["key"] not in pool.get(ref["name"], {}):
                        problems.append(f"{here}: {name} from {kind} {ref['name']}/{ref['key']}, which is not defined")
                defined.add(name)
            for m in c.get("volumeMounts") or []:
                if m["name"] not in pod_volumes:
                    problems.append(f"{here}: mounts volume {m['name']}, which the pod does not declare")
            argvs = [as_list(c.get("command")) + as_list(c.get("args"))]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                exe = (c.get(probe) or {}).get("exec")
                if exe:
                    argvs.append(as_list(exe["command"]))
            for argv in argvs:
                for cmd in argv_commands(argv):
                    problems += [f"{here}: {e}" for e in check_argv(cmd)]
                    if cmd[:2] == ["pbt", "health"] and "--worker" in cmd and cmd[-1] == "--worker" and "PBT_WORKER_ID" not in defined:
                        problems.append(f"{here}: `pbt health --worker` without an ID needs PBT_WORKER_ID")
    return problems


def gpu_limit(c: dict) -> int:
    return int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def sbatch_directives(text: str) -> tuple[dict[str, str], list[str]]:
    """The ``#SBATCH --opt[=value]`` lines sbatch reads (those before the first command), and the
    ones after it, which sbatch silently ignores."""
    read, ignored, started = {}, [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#SBATCH"):
            opt, _, value = s[len("#SBATCH"):].strip().partition("=")
            if started:
                ignored.append(opt)
            else:
                read[opt] = value
        elif s and not s.startswith("#"):
            started = True
    return read, ignored


def sbatch_problems(path: Path) -> list[str]:
    """Everything that is wrong with a batch script, as lines (empty: nothing)."""
    text = path.read_text()
    problems = [f"{path.name}: {e}" for cmd in shell_commands(text) for e in check_argv(cmd)]
    problems += [f"{path.name}: {name}, which pbt-mq never reads"
                 for name in sorted(set(re.findall(r"\bPBT_[A-Z0-9_]+", text)) - KNOWN_ENV)]
    directives, ignored = sbatch_directives(text)
    problems += [f"{path.name}: #SBATCH {opt} after the first command: sbatch ignores it" for opt in ignored]
    if not text.startswith("#!/bin/bash"):
        problems.append(f"{path.name}: not a bash script (#!/bin/bash)")
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if res.returncode:
        problems.append(f"{path.name}: bash -n: {res.stderr.strip()}")
    signal_opt = directives.get("--signal", "")
    if signal_opt and not re.fullmatch(r"(B:)?(R:)?[A-Z0-9]+@\d+", signal_opt):
        problems.append(f"{path.name}: --signal={signal_opt} is not [B:]SIG@SECONDS")
    return problems


# ---------------------------------------------------------------- the checkers can fail


def test_the_cli_checker_flags_bad_command_lines():
    assert check_argv(["pbt-worker", "--queue", "pbt", "--device", "cuda:0"]) == []
    assert check_argv(["pbt", "launch", "x.toml", "--set", "population.size=4"]) == []
    assert check_argv(["pbt", "health", "--worker"]) == []
    assert check_argv(["pbt", "health", "--worker", "w1", "--max-age-s", "6"]) == []
    assert any("no option --gpus" in e for e in check_argv(["pbt-worker", "--gpus", "2"]))
    assert any("no option --max" in e for e in check_argv(["pbt-worker", "--max", "3"]))  # argparse would take it
    assert any("no subcommand 'healthz'" in e for e in check_argv(["pbt", "healthz"]))
    assert any("does not parse" in e for e in check_argv(["pbt", "launch"]))  # the file is required
    assert any("does not parse" in e for e in check_argv(["pbt-arbiter", "--block-ms", "soon"]))
    assert check_argv(["pbt-arbiterz"])


def test_shell_scripts_are_searched_for_commands():
    script = ('exp=$$(pbt launch /e/x.toml --store s3://b/p) && pbt wait "$$exp" --timeout 60; echo pbt list\n'
              'exec pbt-worker --id w\nPBT_QUEUE=q pbt-arbiter --burst  # pbt status')
    cmds = shell_commands(script, compose=True)
    assert cmds == [["pbt", "launch", "/e/x.toml", "--store", "s3://b/p"], ["pbt", "wait", "$exp", "--timeout", "60"],
                    ["pbt-worker", "--id", "w"], ["pbt-arbiter", "--burst"]]


def test_the_compose_checker_flags_a_bad_snippet():
    snippet = yaml.safe_load("""
services:
  worker:
    image: pbt-mq-nothing:1
    command: ["pbt-worker", "--gpus", "1"]
    environment: {PBT_GPUS: "1", PBT_QUEUE: pbt}
    env_file: [missing.env]
    volumes: [undeclared:/data, ./no-such-dir:/x]
    secrets: [nope]
    depends_on: [ghost]
    healthcheck: {test: ["CMD-SHELL", "pbt helth"]}
""")
    problems = "\n".join(compose_problems(snippet))
    for expected in ("no option --gpus", "PBT_GPUS", "missing.env", "pbt-mq-nothing", "volume undeclared",
                     "no-such-dir", "secret nope", "ghost", "no subcommand 'helth'"):
        assert expected in problems
    assert "PBT_QUEUE" not in problems


def test_the_k8s_checker_flags_a_bad_snippet():
    docs = list(yaml.safe_load_all("""
kind: ConfigMap
metadata: {name: cfg}
data: {PBT_QUEUE: pbt, PBT_NOPE: "1"}
---
kind: Secret
metadata: {name: s}
stringData: {redis-password: x}
---
kind: Deployment
metadata: {name: w}
spec:
  selector: {matchLabels: {app: w}}
  template:
    metadata: {labels: {app: other}}
    spec:
      containers:
        - name: c
          command: ["pbt-worker", "--devices", "2"]
          envFrom: [{configMapRef: {name: cfg}}, {configMapRef: {name: gone}}]
          env:
            - {name: PBT_REDIS_URL, value: "redis://:$(REDIS_PASSWORD)@h"}
            - name: REDIS_PASSWORD
              valueFrom: {secretKeyRef: {name: s, key: redis-pass}}
          readinessProbe: {exec: {command: ["pbt", "health", "--worker"]}}
          volumeMounts: [{name: v, mountPath: /v}]
"""))
    problems = "\n".join(k8s_problems(docs))
    for expected in ("selector", "PBT_NOPE", "envFrom gone", "$(REDIS_PASSWORD)", "s/redis-pass", "mounts volume v",
                     "no option --devices", "needs PBT_WORKER_ID"):
        assert expected in problems, expected
    assert "PBT_QUEUE" not in problems


def test_the_dockerfile_checker_flags_missing_and_ignored_sources(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "junk").mkdir()
    df = tmp_path / "Dockerfile"
    df.write_text("FROM python:3.11-slim\nCOPY pkg /app/pkg\nCOPY nothing-here /x\nCOPY --chown=1 junk /j\n"
                  "RUN pip install torch numpy \\\n && echo\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("*\n!pkg\n")
    problems = "\n".join(dockerfile_problems(df, tmp_path))
    assert "nothing-here" in problems and "junk is excluded" in problems and "COPY pkg" not in problems
    assert pip_installs(df) == ["torch numpy"]


def test_the_sbatch_checker_flags_a_bad_script(tmp_path):
    script = tmp_path / "bad.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --gres=gpu:1\n#SBATCH --signal=USR1-300\nexport PBT_GPUS=1\n"
                      "#SBATCH --requeue\npbt-worker --gpus 1 &\nif true; then\n")
    problems = "\n".join(sbatch_problems(script))
    for expected in ("no option --gpus", "PBT_GPUS", "#SBATCH --requeue after the first command", "bash -n",
                     "--signal=USR1-300"):
        assert expected in problems, expected
    assert sbatch_directives(script.read_text())[0] == {"--gres": "gpu:1", "--signal": "USR1-300"}


def test_known_env_vars_come_from_the_code():
    assert {"PBT_REDIS_URL", "PBT_STORE_URL", "PBT_S3_ACCESS_KEY", "PBT_S3_SECRET_KEY", "PBT_WORKER_ID", "PBT_QUEUE"} <= KNOWN_ENV
    assert "PBT_TEST_REDIS_URL" not in KNOWN_ENV  # the tests' own, not the package's


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_is_consistent_with_the_cli_and_the_repository(compose):
    assert compose_problems(compose) == []


def test_compose_services(compose):
    s = compose["services"]
    argv = {n: compose_service_argvs(svc, DEPLOY)[0] for n, svc in s.items()}
    workers = [n for n, a in argv.items() if a[:1] == ["pbt-worker"]]
    arbiters = [n for n, a in argv.items() if a[:1] == ["pbt-arbiter"]]
    assert len(workers) >= 2 and arbiters
    assert sum((s[n].get("deploy") or {}).get("replicas", 1) for n in arbiters) == 2
    # one GPU each, different GPUs, different worker ids; inside the container it is cuda:0
    ids, devices = set(), set()
    for n in workers:
        (dev,) = s[n]["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"] and len(dev["device_ids"]) == 1
        devices.add(dev["device_ids"][0])
        env = compose_env(s[n], DEPLOY)
        assert env["PBT_DEVICE"] == "cuda:0"
        ids.add(env["PBT_WORKER_ID"])
        assert compose_build(s[n], DEPLOY).name == "Dockerfile.worker"
        assert s[n]["healthcheck"]["test"] == ["CMD", "pbt", "health", "--worker"]
        assert s[n].get("stop_grace_period")  # SIGTERM finishes the segment: more than the default 10 s
    for n, a in argv.items():
        if a[:1] in (["pbt-worker"], ["pbt-arbiter"], ["pbt"]):
            assert {"PBT_REDIS_URL", "PBT_STORE_URL", "PBT_S3_ACCESS_KEY", "PBT_S3_SECRET_KEY"} <= set(compose_env(s[n], DEPLOY)), n
    assert len(ids) == len(devices) == len(workers)
    # pbt-arbiter and the pbt CLI run from the image without torch
    for n, a in argv.items():
        if a[:1] in (["pbt-arbiter"], ["pbt"]):
            image = s[n]["image"]
            builders = [svc for svc in s.values() if svc.get("image") == image and svc.get("build")]
            assert compose_build(builders[0], DEPLOY).name == "Dockerfile.arbiter", n
    # the launcher: pbt launch of a file that exists, never started by a plain `up`
    launchers = [n for n, a in argv.items() if a[:2] == ["pbt", "launch"]]
    assert len(launchers) == 1
    launch = s[launchers[0]]
    assert launch.get("profiles")
    target = argv[launchers[0]][2]
    mounts = [v.split(":") for v in launch["volumes"]]
    assert any(target.startswith(dst + "/") and (DEPLOY / src / target[len(dst) + 1 :]).exists() for src, dst, *_ in mounts)


def test_compose_redis_and_minio(compose):
    s = compose["services"]
    redis_cmd = " ".join(as_list(s["redis"]["command"]))
    assert "--appendonly yes" in redis_cmd and "requirepass" in redis_cmd
    health = " ".join(s["redis"]["healthcheck"]["test"])
    assert "redis-cli" in health and "ping" in health and ("REDISCLI_AUTH" in health or " -a " in health)
    services_env = read_env_file(env_file_path("services.env", DEPLOY))
    pbt_env = read_env_file(env_file_path("pbt.env", DEPLOY))
    # credentials only from env files: no literal password in compose.yaml
    text = (DEPLOY / "compose.yaml").read_text()
    for secret in (services_env["REDIS_PASSWORD"], services_env["MINIO_ROOT_PASSWORD"], pbt_env["PBT_S3_SECRET_KEY"]):
        assert secret not in text
    # PBT_REDIS_URL points at the redis service with its password
    url = urllib.parse.urlsplit(pbt_env["PBT_REDIS_URL"])
    assert url.hostname in s and url.password == services_env["REDIS_PASSWORD"]
    # PBT_STORE_URL points at the minio service, and minio-init makes its bucket
    store = urllib.parse.urlsplit(pbt_env["PBT_STORE_URL"])
    endpoint = urllib.parse.parse_qs(store.query)["endpoint"][0]
    assert endpoint.split(":")[0] in s
    init = "\n".join(as_list(s["minio-init"]["command"]))
    assert f"mc mb --ignore-existing local/{store.netloc}" in init
    assert "$$PBT_S3_ACCESS_KEY" in init  # pbt's own MinIO user, not the root one
    assert "PBT_S3_ACCESS_KEY" not in read_env_file(env_file_path("services.env", DEPLOY))
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert key in services_env and key not in pbt_env


def test_env_files():
    examples = sorted(DEPLOY.glob("*.env.example")) + sorted(SLURM.glob("*.env.example"))
    assert {p.name for p in examples} >= {"pbt.env.example", "services.env.example"}
    for p in examples:
        assert [k for k in read_env_file(p) if k.startswith("PBT_") and k not in KNOWN_ENV] == []
        # the filled-in copy is never committed
        ignored = [ln.strip() for ln in (DEPLOY / ".gitignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert any(fnmatch.fnmatch(p.name[: -len(".example")], pat) for pat in ignored)


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", ["Dockerfile.worker", "Dockerfile.arbiter"])
def test_dockerfile_sources_exist(name):
    assert dockerfile_problems(DEPLOY / name) == []


def test_arbiter_image_has_no_torch():
    installs = pip_installs(DEPLOY / "Dockerfile.arbiter")
    assert installs and not any("torch" in i for i in installs)
    assert dockerfile_lines(DEPLOY / "Dockerfile.arbiter")[0].startswith("FROM python:3.11-slim")
    assert dockerfile_cmd(DEPLOY / "Dockerfile.arbiter") == ["pbt-arbiter"]


# That the arbiter and the CLI import no torch at run time is tests/test_inspect.py's
# test_arbiter_and_cli_never_import_torch_or_matplotlib.


def test_worker_image_runs_the_example_trainable():
    lines = dockerfile_lines(DEPLOY / "Dockerfile.worker")
    base = next(ln for ln in lines if ln.startswith("ARG BASE=")).split("=", 1)[1]
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base
    assert dockerfile_cmd(DEPLOY / "Dockerfile.worker") == ["pbt-worker"]
    assert any("[examples" in i for i in pip_installs(DEPLOY / "Dockerfile.worker"))
    # the trainable of every example experiment resolves: its package is copied onto PYTHONPATH
    pythonpath = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("ENV PYTHONPATH="))
    copies = {shlex.split(ln)[-1].rstrip("/"): shlex.split(ln)[-2] for ln in lines if ln.startswith("COPY ")}
    for toml in sorted((ROOT / "workers").glob("*.toml")):
        module = re.search(r'^trainable\s*=\s*"([\w.]+):\w+"', toml.read_text(), re.M).group(1)
        pkg = module.split(".")[0]
        assert copies.get(f"{pythonpath}/{pkg}") == pkg, f"{toml.name}: {pkg} not copied to {pythonpath}"
        assert (ROOT / (module.replace(".", "/") + ".py")).exists()


# ---------------------------------------------------------------- SLURM (started for real by test_slurm.py)


def sbatch_script(name: str) -> tuple[str, dict[str, str], list[list[str]]]:
    text = (SLURM / name).read_text()
    return text, sbatch_directives(text)[0], shell_commands(text)


@pytest.mark.parametrize("name", ["worker.sbatch", "arbiter.sbatch"])
def test_sbatch_scripts_are_consistent_with_the_cli(name):
    assert sbatch_problems(SLURM / name) == []


@pytest.mark.parametrize("name, prog", [("worker.sbatch", "pbt-worker"), ("arbiter.sbatch", "pbt-arbiter")])
def test_sbatch_scripts_stop_cleanly_and_come_back(name, prog):
    text, d, cmds = sbatch_script(name)
    assert [c[0] for c in cmds] == [prog]
    assert "--requeue" in d and d["--open-mode"] == "append" and "%A_%a" in d["--output"] and d["--array"]
    # the time-limit warning goes to the batch shell, which stops the program and requeues this task only
    assert re.fullmatch(r"B:USR1@\d+", d["--signal"])
    assert "trap 'requeue=1' USR1" in text and 'scontrol requeue "$task"' in text
    assert "task=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" in text
    # scancel's SIGTERM reaches the program itself: the shell must not pass on a second one
    assert "trap ':' TERM" in text


def test_sbatch_worker_one_gpu_each_and_a_grace_under_the_warning():
    text, d, (cmd,) = sbatch_script("worker.sbatch")
    assert d["--gres"] == "gpu:1"
    assert 'export PBT_WORKER_ID="${SLURM_CLUSTER_NAME:-slurm}-$task"' in text  # one id per task, kept across requeues
    lead_s = int(d["--signal"].split("@")[1])
    grace_s = float(re.search(r"^GRACE_S=\$\{GRACE_S:-([\d.]+)\}", text, re.M).group(1))
    assert grace_s + 30 <= lead_s, "the warning must leave the worker its grace and time to upload and exit"
    assert "--grace-s" in daemons.build_worker_parser()._option_string_actions
    assert re.search(r'^export PBT_GRACE_S="\$GRACE_S"$', text, re.M), "the worker must get GRACE_S as PBT_GRACE_S"


def test_sbatch_arbiter_needs_no_gpu():
    _, d, _ = sbatch_script("arbiter.sbatch")
    assert "--gres" not in d and "--gpus" not in d


def test_slurm_env_example_is_what_bash_sources(tmp_path):
    """The scripts source pbt.env with bash (set -a): what bash makes of the example is valid."""
    out = subprocess.run(["bash", "-c", f"set -a; . {SLURM / 'pbt.env.example'}; env -0"], capture_output=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 0, out.stderr
    env = dict(kv.split("=", 1) for kv in out.stdout.decode().split("\0") if "=" in kv)
    pbt_vars = {k: v for k, v in env.items() if k.startswith("PBT_")}
    assert {"PBT_REDIS_URL", "PBT_STORE_URL"} <= set(pbt_vars) <= KNOWN_ENV
    settings.check_environment(pbt_vars)
    assert pbt_vars["PBT_STORE_URL"].startswith("file:///")  # a shared filesystem: no MinIO needed
    assert "VENV" in env and "PYTHONPATH" in env


# ---------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return k8s_docs()


def all_docs(k8s: dict[str, list[dict]]) -> list[dict]:
    return [d for docs in k8s.values() for d in docs]


def test_k8s_is_consistent_with_the_cli(k8s):
    assert k8s_problems(all_docs(k8s)) == []


def test_k8s_kustomization_lists_every_manifest(k8s):
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    images = {c["image"].split(":")[0] for _, spec in pod_specs(all_docs(k8s)) for c in spec["containers"]}
    assert {i["name"] for i in kust.get("images", [])} <= images


def test_k8s_workloads(k8s):
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in all_docs(k8s)}
    arbiter, worker, launch = docs["Deployment/pbt-arbiter"], docs["Deployment/pbt-worker"], docs["Job/pbt-launch"]
    cm = docs["ConfigMap/pbt-config"]
    assert arbiter["spec"]["replicas"] == 2
    built = {"pbt-mq-worker": "Dockerfile.worker", "pbt-mq-arbiter": "Dockerfile.arbiter"}
    for d, prog, gpus, dockerfile in ((arbiter, "pbt-arbiter", 0, "Dockerfile.arbiter"), (worker, "pbt-worker", 1, "Dockerfile.worker"),
                                      (launch, "pbt", 0, "Dockerfile.arbiter")):
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["command"][0] == prog
        assert gpu_limit(c) == gpus
        assert built[c["image"].split(":")[0]] == dockerfile and (DEPLOY / dockerfile).exists()
        if d["kind"] == "Deployment":
            assert c.get("readinessProbe") and c.get("livenessProbe")
        names = {e["name"] for e in c["env"]} | {k for ef in c["envFrom"] for k in cm["data"] if ef["configMapRef"]["name"] == "pbt-config"}
        assert {"PBT_REDIS_URL", "PBT_STORE_URL", "PBT_S3_ACCESS_KEY", "PBT_S3_SECRET_KEY"} <= names
    # the arbiter's liveness probe reads the metrics port its PBT_METRICS_PORT opens
    (ac,) = arbiter["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in ac["ports"]}
    assert ports[ac["livenessProbe"]["httpGet"]["port"]] == int(cm["data"]["PBT_METRICS_PORT"])
    wspec = worker["spec"]["template"]["spec"]
    (wc,) = wspec["containers"]
    # SIGTERM finishes the current segment: the grace period must leave room for one
    assert wspec["terminationGracePeriodSeconds"] >= 300
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert wc[probe]["exec"]["command"] == ["pbt", "health", "--worker"]
    env = {e["name"]: e for e in wc["env"]}
    assert env["PBT_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PBT_DEVICE"]["value"] == "cuda:0"
    # the launch Job's experiment file is in the arbiter image
    target = launch["spec"]["template"]["spec"]["containers"][0]["command"][2]
    copies = [shlex.split(ln)[1:] for ln in dockerfile_lines(DEPLOY / "Dockerfile.arbiter") if ln.startswith("COPY ")]
    assert any(target.startswith(dst) and (ROOT / Path(src).parent / Path(target).name).exists()
               for *srcs, dst in copies for src in srcs)


def test_k8s_secrets_are_placeholders(k8s):
    (secret,) = [d for d in all_docs(k8s) if d["kind"] == "Secret"]
    assert set(secret["stringData"].values()) == {"change-me"}
    (cm,) = [d for d in all_docs(k8s) if d["kind"] == "ConfigMap"]
    assert not any("password" in k.lower() or "secret" in k.lower() for k in cm["data"])


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl to render the kustomization")
def test_kustomize_renders():
    try:
        out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("kubectl kustomize did not answer")
    assert out.returncode == 0, out.stderr
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == ["ConfigMap/pbt-config", "Deployment/pbt-arbiter", "Deployment/pbt-worker", "Job/pbt-launch",
                     "Namespace/pbt", "Secret/pbt-secrets"]
    assert "registry.example.com/pbt-mq-worker:0.1.0" in out.stdout


# ---------------------------------------------------------------- pbt health (the probes' command)


def health(*args: str) -> int:
    return main.main(["health", *args])


def test_health_redis_only(redis_url, capsys):
    assert health("--redis", redis_url) == options.EXIT_OK
    assert "ok" in capsys.readouterr().out


def test_health_unreachable_redis(capsys):
    assert health("--redis", "redis://127.0.0.1:1/0") == options.EXIT_FAIL
    assert "cannot reach Redis" in capsys.readouterr().err


def test_health_worker_heartbeat(redis_url, r, monkeypatch, capsys):
    monkeypatch.delenv("PBT_WORKER_ID", raising=False)
    assert health("--redis", redis_url, "--worker") == options.EXIT_USAGE  # no id anywhere
    assert health("--redis", redis_url, "--worker", "w1") == options.EXIT_FAIL  # no heartbeat
    assert "no heartbeat" in capsys.readouterr().err
    r.hset(worker_key("w1"), mapping={"beat_ms": int(time.time() * 1000), "current": ""})
    assert health("--redis", redis_url, "--worker", "w1") == options.EXIT_OK
    monkeypatch.setenv("PBT_WORKER_ID", "w1")
    assert health("--redis", redis_url, "--worker") == options.EXIT_OK  # the id from the environment
    r.hset(worker_key("w1"), "beat_ms", int(time.time() * 1000) - 60_000)
    assert health("--redis", redis_url, "--worker") == options.EXIT_FAIL  # stale: the worker stopped beating
    assert "60." in capsys.readouterr().err
    assert health("--redis", redis_url, "--worker", "--max-age-s", "120") == options.EXIT_OK
