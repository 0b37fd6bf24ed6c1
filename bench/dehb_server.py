"""DEHB (``dehb`` 0.1.2, Awad et al. 2021) as a JSON-lines ask/tell server, run by the
yahpo venv: DEHB needs numpy 1.x, which the project's venv cannot hold.

One JSON object a line on stdin, one reply a line on stdout:

    {"cmd": "new", "id": "s1", "seed": 0, "space": [...], "min_fidelity": 1,
     "max_fidelity": 52, "eta": 3}                         -> {"ok": true}
    {"cmd": "ask", "id": "s1"}                             -> {"job": 7, "config": {...},
                                                               "fidelity": 17.33}
    {"cmd": "tell", "id": "s1", "job": 7, "fitness": -91.2, "cost": 17}  -> {"ok": true}
    {"cmd": "drop", "id": "s1"}                            -> {"ok": true}

``space``: [{"name", "type": "float" | "int", "low", "high", "log"}]. DEHB minimises
``fitness``. Standalone: it imports nothing of the project.
"""

from __future__ import annotations

import json
import sys
import tempfile

VERSION = "0.1.2"


def config_space(spec: list[dict], seed: int):
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=seed)
    kinds = {"float": CS.UniformFloatHyperparameter, "int": CS.UniformIntegerHyperparameter}
    cs.add_hyperparameters(
        [kinds[p["type"]](p["name"], p["low"], p["high"], log=p["log"]) for p in spec]
    )
    return cs


class Server:
    def __init__(self):
        self.runs: dict[str, object] = {}
        self.jobs: dict[str, dict[int, dict]] = {}  # run -> job number -> DEHB's job
        self.asked: dict[str, int] = {}  # run -> last job number handed out
        self.folder = tempfile.mkdtemp(prefix="dehb-")  # DEHB's log file

    def new(self, r: dict) -> dict:
        from dehb import DEHB

        self.runs[r["id"]] = DEHB(
            cs=config_space(r["space"], r["seed"]),
            min_fidelity=r["min_fidelity"],
            max_fidelity=r["max_fidelity"],
            eta=r["eta"],
            n_workers=1,
            seed=r["seed"],
            output_path=self.folder,
            save_freq=None,
            log_level="ERROR",
        )
        self.jobs[r["id"]] = {}
        return {"ok": True}

    def ask(self, r: dict) -> dict:
        job = self.runs[r["id"]].ask()
        number = self.asked[r["id"]] = self.asked.get(r["id"], -1) + 1
        self.jobs[r["id"]][number] = job
        config = {k: v.item() if hasattr(v, "item") else v for k, v in dict(job["config"]).items()}
        return {"job": number, "config": config, "fidelity": float(job["fidelity"])}

    def tell(self, r: dict) -> dict:
        job = self.jobs[r["id"]].pop(r["job"])
        self.runs[r["id"]].tell(job, {"fitness": r["fitness"], "cost": r["cost"]})
        return {"ok": True}

    def drop(self, r: dict) -> dict:
        for table in (self.runs, self.jobs, self.asked):
            table.pop(r["id"], None)
        return {"ok": True}


def main() -> int:
    out, sys.stdout = sys.stdout, sys.stderr  # DEHB's logger writes to stdout
    from importlib.metadata import version

    if version("dehb") != VERSION:  # the ask/tell interface this server was written for
        raise SystemExit(f"dehb_server: dehb {VERSION} expected, got {version('dehb')}")
    server = Server()
    out.write(json.dumps({"ready": VERSION}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            reply = getattr(server, request["cmd"])(request)
        except Exception as exc:  # the client raises it, naming the request
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
