#!/usr/bin/env python3
"""Runs the chart's CoreDNS Jobs' scripts (coredns.patch=true) with /bin/sh
against a fake kubectl and the real `causeway lighthouse corefile`, for both
flavours: add, add again (no change), a changed Service IP (replaced), a
block the user wrote (left alone), remove (the Corefile as it was), remove
again (no change).

usage: hooks.py HELM CHART CAUSEWAY_BIN REAL_KUBECTL
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
COREFILE = """.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
}
"""


def jobs(helm, chart, flavour):
    out = subprocess.run(
        [helm, "template", "causeway", chart, "--namespace", "causeway",
         "--set", "cluster.id=a", "--set", "coredns.patch=true",
         "--set", f"coredns.flavour={flavour}", "--show-only", "templates/coredns.yaml"],
        check=True, capture_output=True, text=True).stdout
    found = {}
    for d in yaml.safe_load_all(out):
        if d and d["kind"] == "Job":
            c = d["spec"]["template"]["spec"]["containers"][0]
            found[d["metadata"]["name"].rsplit("-", 1)[1]] = c
    return found["patch"], found["unpatch"]


class Env:
    def __init__(self, bin_, real_kubectl):
        self.dir = tempfile.mkdtemp(prefix="causeway-hooks-")
        self.store = os.path.join(self.dir, "store")
        self.work = os.path.join(self.dir, "work")
        path = os.path.join(self.dir, "bin")
        for d in (self.store, self.work, path):
            os.mkdir(d)
        os.symlink(os.path.join(HERE, "fake-kubectl"), os.path.join(path, "kubectl"))
        os.symlink(os.path.abspath(bin_), os.path.join(path, "causeway"))
        self.env = dict(os.environ, PATH=f"{path}:{os.environ['PATH']}",
                        FAKE_KUBE_STORE=self.store, REAL_KUBECTL=os.path.abspath(real_kubectl))

    def run(self, container, ip="10.96.0.77"):
        script = container["command"][2].replace("cd /tmp", f"cd {self.work}")
        args = [a.replace("$(LIGHTHOUSE_IP)", ip) for a in container.get("args", [])]
        return subprocess.run(["/bin/sh", "-ec", script, container["command"][3]] + args,
                              env=self.env, capture_output=True, text=True)

    def cm(self, name):
        p = os.path.join(self.store, f"kube-system.{name}.json")
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f).get("data") or {}

    def put(self, name, data):
        with open(os.path.join(self.store, f"kube-system.{name}.json"), "w") as f:
            json.dump({"data": data}, f)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def check(cond, what, proc=None):
    if not cond:
        detail = f"\n    stdout: {proc.stdout.strip()}\n    stderr: {proc.stderr.strip()}" if proc else ""
        raise AssertionError(what + detail)


def kubeadm(helm, chart, bin_, kubectl):
    patch, unpatch = jobs(helm, chart, "kubeadm")
    e = Env(bin_, kubectl)
    try:
        e.put("coredns", {"Corefile": COREFILE})
        p = e.run(patch)
        check(p.returncode == 0, "kubeadm patch failed", p)
        core = e.cm("coredns")["Corefile"]
        check(core.startswith(COREFILE) and "forward . 10.96.0.77:53" in core
              and core.count("clusterset.local:53 {") == 1, f"kubeadm patch wrote:\n{core}")
        p = e.run(patch)
        check(p.returncode == 0 and "up to date" in p.stdout and e.cm("coredns")["Corefile"] == core,
              "kubeadm patch again changed the Corefile", p)
        p = e.run(patch, ip="10.96.0.88")
        core2 = e.cm("coredns")["Corefile"]
        check(p.returncode == 0 and "10.96.0.88:53" in core2 and "10.96.0.77" not in core2
              and core2.count("clusterset.local:53 {") == 1, f"a new Service IP gave:\n{core2}", p)
        p = e.run(unpatch)
        check(p.returncode == 0 and e.cm("coredns")["Corefile"] == COREFILE,
              f"kubeadm unpatch left:\n{e.cm('coredns')['Corefile']}", p)
        p = e.run(unpatch)
        check(p.returncode == 0 and e.cm("coredns")["Corefile"] == COREFILE, "kubeadm unpatch again", p)
        mine = COREFILE + "clusterset.local:53 {\n    forward . 10.1.2.3\n}\n"
        e.put("coredns", {"Corefile": mine})
        p = e.run(patch)
        check(p.returncode == 0 and e.cm("coredns")["Corefile"] == mine,
              "kubeadm patch changed a clusterset.local block it did not write", p)
    finally:
        e.close()


def k3s(helm, chart, bin_, kubectl):
    patch, unpatch = jobs(helm, chart, "k3s")
    e = Env(bin_, kubectl)
    key = "clusterset.local.server"
    try:
        p = e.run(unpatch)
        check(p.returncode == 0 and e.cm("coredns-custom") is None, "k3s unpatch without coredns-custom", p)
        p = e.run(patch)
        data = e.cm("coredns-custom")
        check(p.returncode == 0 and data and "forward . 10.96.0.77:53" in data.get(key, ""),
              f"k3s patch created {data}", p)
        e.put("coredns-custom", {"other.server": "other:53 {\n}\n", key: data[key]})
        p = e.run(patch, ip="10.96.0.88")
        data = e.cm("coredns-custom")
        check(p.returncode == 0 and "10.96.0.88:53" in data[key] and "other.server" in data,
              f"k3s patch of an existing coredns-custom gave {data}", p)
        p = e.run(unpatch)
        check(p.returncode == 0 and e.cm("coredns-custom") == {"other.server": "other:53 {\n}\n"},
              f"k3s unpatch left {e.cm('coredns-custom')}", p)
        p = e.run(unpatch)
        check(p.returncode == 0, "k3s unpatch again", p)
    finally:
        e.close()


def main():
    helm, chart, bin_, kubectl = sys.argv[1:5]
    failed = 0
    for test in (kubeadm, k3s):
        try:
            test(helm, chart, bin_, kubectl)
        except (AssertionError, subprocess.CalledProcessError) as err:
            failed += 1
            print(f"{test.__name__}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
