#!/usr/bin/env python3
"""A small kubelet for the cluster tests: runs the pods bound to one Node as
podman containers and reports their status through the API, as a kubelet does.

It authenticates as the node (client certificate CN=system:node:<name>,
O=system:nodes), so the Node authorizer and the NodeRestriction admission
plugin restrict it exactly as they restrict a kubelet.

What it does:
  * registers the Node (capacity, Ready condition, addresses) and renews its
    Lease in kube-node-lease every 10 s (node status every 60 s);
  * watches the pods with spec.nodeName=<node> and runs each container with
    `podman run`: image (never pulled: absent -> ErrImagePull, then
    ImagePullBackOff), command/args, env (value, valueFrom fieldRef /
    secretKeyRef / configMapKeyRef / resourceFieldRef), envFrom, volumes
    (configMap, secret, emptyDir, downwardAPI, projected incl.
    serviceAccountToken from the TokenRequest API), resources.limits as cgroup
    limits (--memory / --cpus; OOMKilled is reported), securityContext
    (runAsUser/Group, fsGroup, readOnlyRootFilesystem, capabilities,
    allowPrivilegeEscalation), restartPolicy (with CrashLoopBackOff);
  * reports phase, conditions and containerStatuses;
  * graceful deletion: `podman stop -t <grace>`, then deletes the pod with
    gracePeriodSeconds=0;
  * serves container logs to the API server (kubectl logs) on --port.
  Pods get KUBERNETES_SERVICE_HOST/PORT pointing at --api-host (the podman
  bridge gateway), so in-cluster clients reach the API server as pods do.

Not done: init containers, probes, multi-container pods sharing one network
namespace, exec/attach/port-forward, image pulls, token rotation.

Standard library only.
"""

import argparse
import base64
import datetime
import http.client
import http.server
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse

log = logging.getLogger("node-agent")
LABEL = "engine.test/node"  # on every container this agent makes
BACKOFF_MAX = 300


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def rfc3339(t=None):
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro(t=None):
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def podman_time(s):
    """podman's '2025-01-02T03:04:05.123456789Z' / '+00:00' -> RFC 3339 seconds (UTC)."""
    if not s or s.startswith("0001-"):
        return None
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?", s)
    if not m:
        return None
    t = datetime.datetime.fromisoformat(m.group(1) + (m.group(2) or "Z").replace("Z", "+00:00"))
    return rfc3339(t.astimezone(datetime.timezone.utc))


QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?\d+)?)([a-zA-Z]*)$")
SUFFIX = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "P": 1e15, "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
          "Pi": 2**50, "Ei": 2**60}


def quantity(q):
    m = QUANTITY.match(str(q).strip())
    if not m or m.group(2) not in SUFFIX:
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * SUFFIX[m.group(2)]


class ApiError(Exception):
    def __init__(self, status, body):
        self.status = status
        self.reason = body.get("reason", "")
        super().__init__(f"{status} {self.reason}: {body.get('message', '')}")


class NotReady(Exception):
    """A pod cannot start yet; args are (waiting reason, message)."""


class Api:
    def __init__(self, server, ca, cert, key):
        u = urllib.parse.urlsplit(server)
        self.host, self.port = u.hostname, u.port or 443
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def open(self, method, path, body=None, ctype="application/json", timeout=30):
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = ctype
        conn.request(method, path, body=data, headers=headers)
        return conn, conn.getresponse()

    def call(self, method, path, body=None, ctype="application/json"):
        conn, resp = self.open(method, path, body, ctype)
        try:
            raw = resp.read()
        finally:
            conn.close()
        obj = json.loads(raw) if raw else {}
        if resp.status >= 300:
            raise ApiError(resp.status, obj)
        return obj

    def get(self, path):
        return self.call("GET", path)

    def patch(self, path, body):
        return self.call("PATCH", path, body, "application/merge-patch+json")


def podman(*args, check=True, timeout=120):
    p = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"podman {args[0]}: {p.stderr.strip() or p.stdout.strip()}")
    return p


class Agent:
    def __init__(self, a):
        self.a = a
        self.node = a.node_name
        self.api = Api(a.server, a.ca, a.cert, a.key)
        self.root = os.path.abspath(a.root)
        self.pods = {}  # uid -> per-pod state (dict)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.terminating = set()
        self.oom = set()  # cgroups (engine.test/cgroup labels) where the kernel OOM-killed
        self.removed = set()  # cgroups remove() deleted
        self.started = now()

    # ------------------------------------------------------------ the Node
    def node_status(self):
        t = rfc3339()
        cond = lambda type_, status, reason, msg: {  # noqa: E731
            "type": type_, "status": status, "reason": reason, "message": msg,
            "lastHeartbeatTime": t, "lastTransitionTime": rfc3339(self.started)}
        res = {"cpu": str(self.a.cpu), "memory": self.a.memory, "pods": str(self.a.max_pods),
               "ephemeral-storage": "100Gi"}
        return {
            "capacity": res, "allocatable": res,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                cond("Ready", "True", "KubeletReady", "node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.a.node_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.a.port}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                "osImage": "podman", "containerRuntimeVersion": "podman://" + self.podman_version,
                "kubeletVersion": self.a.version, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64"},
        }

    def register(self):
        self.podman_version = podman("version", "--format", "{{.Client.Version}}").stdout.strip()
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64"}},
                "status": self.node_status()}
        try:
            self.api.call("POST", "/api/v1/nodes", body)
            log.info("registered node %s", self.node)
        except ApiError as e:
            if e.status != 409:
                raise
        self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self.node_status()})

    def heartbeat(self):
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        last_status = time.monotonic()
        while True:
            try:
                try:
                    lease = self.api.get(path)
                    lease["spec"]["renewTime"] = micro()
                    self.api.call("PUT", path, lease)
                except ApiError as e:
                    if e.status != 404:
                        raise
                    uid = self.api.get(f"/api/v1/nodes/{self.node}")["metadata"]["uid"]
                    self.api.call("POST", path.rsplit("/", 1)[0], {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.node, "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid}]},
                        "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40,
                                 "renewTime": micro()}})
                if time.monotonic() - last_status > 60:
                    self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self.node_status()})
                    last_status = time.monotonic()
            except Exception as e:  # keep beating: the API server may be restarting
                log.warning("heartbeat: %s", e)
            time.sleep(10)

    # ------------------------------------------------------------ watching pods
    def selector(self):
        return "fieldSelector=" + urllib.parse.quote(f"spec.nodeName={self.node}")

    def watch(self):
        """Wakes the sync loop on every change to a pod bound to this node."""
        while True:
            try:
                rv = self.api.get(f"/api/v1/pods?{self.selector()}&limit=1")["metadata"]["resourceVersion"]
                conn, resp = self.api.open(
                    "GET", f"/api/v1/pods?{self.selector()}&watch=1&resourceVersion={rv}"
                    "&allowWatchBookmarks=true&timeoutSeconds=300", timeout=330)
                try:
                    while line := resp.readline():
                        if json.loads(line).get("type") != "BOOKMARK":
                            self.wake.set()
                finally:
                    conn.close()
            except Exception as e:
                log.warning("watch: %s", e)
                time.sleep(1)

    def loop(self):
        while True:
            self.wake.wait(2)
            self.wake.clear()
            try:
                pods = self.api.get(f"/api/v1/pods?{self.selector()}")["items"]
            except Exception as e:
                log.warning("list pods: %s", e)
                continue
            containers = self.containers()
            for pod in pods:
                try:
                    self.sync(pod, containers)
                except Exception as e:
                    log.exception("pod %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], e)
            self.collect({p["metadata"]["uid"] for p in pods}, containers)

    def containers(self):
        """This node's podman containers: uid -> container name -> inspect data."""
        ids = podman("ps", "-aq", "--filter", f"label={LABEL}={self.node}").stdout.split()
        out = {}
        if ids:
            for c in json.loads(podman("inspect", "--type", "container", *ids, check=False).stdout or "[]"):
                labels = c["Config"]["Labels"]
                s = c["State"]
                if (s["Status"] == "running" and not self.alive(s.get("Pid"), c["Id"])
                        and not self.exists(s.get("ConmonPid"))):
                    # conmon shares the container's memory cgroup, and an OOM
                    # kill may take it too (this VM cannot exempt it: no
                    # CAP_SYS_RESOURCE for oom_score_adj -1000); podman then
                    # never learns the exit and says `running` for ever. While
                    # conmon lives, it records the real exit code: a container
                    # that just exited 0 is not reported killed.
                    s.update(Status="exited", ExitCode=137, FinishedAt=micro())
                out.setdefault(labels["io.kubernetes.pod.uid"], {})[labels["io.kubernetes.container.name"]] = c
        return out

    @staticmethod
    def exists(pid):
        """Is `pid` a live (not zombie) process?"""
        try:
            with open(f"/proc/{int(pid)}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError, TypeError, ValueError):
            return False

    @staticmethod
    def alive(pid, cid):
        """Is `pid` a live (not zombie) process of container `cid`?"""
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
            with open(f"/proc/{pid}/cgroup") as f:
                return cid in f.read()
        except (OSError, IndexError):
            return False

    def collect(self, live, containers):
        """Removes what belongs to pods that are gone from the API."""
        for uid, ctrs in containers.items():
            if uid not in live and uid not in self.terminating:
                for c in ctrs.values():
                    self.remove(c)
        for uid in list(self.pods):
            if uid not in live and uid not in self.terminating:
                self.pods.pop(uid)
        # (Finished pods are deleted at once, without a grace period: only this sees them go.)
        pods_dir = os.path.join(self.root, "pods")
        for uid in os.listdir(pods_dir) if os.path.isdir(pods_dir) else []:
            if uid not in live and uid not in self.terminating:
                shutil.rmtree(os.path.join(pods_dir, uid), ignore_errors=True)

    # ------------------------------------------------------------ one pod
    def sync(self, pod, containers):
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
        uid = meta["uid"]
        mine = containers.get(uid, {})
        if meta.get("deletionTimestamp"):
            if uid not in self.terminating:
                self.terminating.add(uid)
                threading.Thread(target=self.terminate, args=(pod, mine), daemon=True).start()
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            return  # terminal: never restarted; containers stay for their logs
        st = self.pods.setdefault(uid, {"restarts": {}, "last": {}, "backoff": {}, "pull": {},
                                        "volumes": False, "start": rfc3339()})
        waiting = {}
        try:
            if not st["volumes"]:
                self.volumes(pod)
                st["volumes"] = True
        except NotReady as e:
            for c in spec["containers"]:
                waiting[c["name"]] = ("ContainerCreating", e.args[1])
        policy = spec.get("restartPolicy", "Always")
        for c in spec["containers"]:
            name = c["name"]
            if name in waiting:
                continue
            info = mine.get(name)
            if info is not None and info["State"]["Status"] in ("exited", "stopped"):
                code = info["State"]["ExitCode"]
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    n = st["restarts"].get(name, 0)
                    st["last"][name] = self.terminated(info)
                    st["restarts"][name] = n + 1
                    st["backoff"][name] = time.monotonic() + min(10 * 2**n, BACKOFF_MAX)
                    self.remove(info)
                    mine.pop(name)
                    info = None
            if info is not None:
                continue
            if time.monotonic() < st["backoff"].get(name, 0):
                waiting[name] = ("CrashLoopBackOff", f"back-off restarting failed container {name}")
                continue
            if podman("image", "exists", c["image"], check=False).returncode != 0:
                # Nothing is pulled here: a missing image is a pull error, then a back-off.
                tries = st["pull"].get(name, 0)
                st["pull"][name] = tries + 1
                msg = f'image "{c["image"]}" is not present on the node (no registry)'
                waiting[name] = ("ErrImagePull" if tries % 5 == 0 else "ImagePullBackOff", msg)
                if tries == 0:
                    self.event(pod, "Warning", "Failed", f"Failed to pull image {c['image']!r}: {msg}")
                continue
            try:
                args = self.run_args(pod, c, st)
            except NotReady as e:
                waiting[name] = e.args
                continue
            try:
                podman("run", "-d", *args)
                self.event(pod, "Normal", "Started", f"Started container {name}")
            except RuntimeError as e:
                podman("rm", "-f", args[1], check=False)  # a created, unstartable container
                waiting[name] = ("RunContainerError", str(e))
                self.event(pod, "Warning", "Failed", str(e))
        mine = self.containers().get(uid, {})
        self.report(pod, st, mine, waiting, policy)

    # A container with a memory limit runs in a cgroup of its own made here
    # (--cgroup-parent), which holds the limit, as a kubelet's pod cgroup does.
    # conmon does not see OOM kills with this hybrid cgroup v1 layout, so the
    # agent registers for the cgroup's OOM notification (an eventfd) before
    # the container starts, and remembers the kill.
    def memory_cgroup(self, key, limit):
        rel = f"/node-agent-{self.node}/{key}"
        d = "/sys/fs/cgroup/memory" + rel
        os.makedirs(d, exist_ok=True)
        with open(d + "/memory.limit_in_bytes", "w") as f:
            f.write(str(limit))
        if os.path.exists(d + "/memory.memsw.limit_in_bytes"):  # no swapping past the limit
            with open(d + "/memory.memsw.limit_in_bytes", "w") as f:
                f.write(str(limit))
        efd = os.eventfd(0)
        ofd = os.open(d + "/memory.oom_control", os.O_RDONLY)
        with open(d + "/cgroup.event_control", "w") as f:
            f.write(f"{efd} {ofd}")
        threading.Thread(target=self.watch_oom, args=(key, d, efd, ofd), daemon=True).start()
        return rel

    def watch_oom(self, key, d, efd, ofd):
        # (This kernel's v1 oom_kill counter stays 0, so the event itself is the signal.)
        try:
            os.read(efd, 8)  # an OOM, or the cgroup's removal by remove()
            if key not in self.removed and os.path.isdir(d):
                self.oom.add(key)
                log.info("%s: OOM-killed", key)
        finally:
            os.close(efd)
            os.close(ofd)

    def remove(self, info):
        """Removes a container, and the cgroup made for it."""
        podman("rm", "-f", "-t", "0", info["Id"], check=False)
        key = info["Config"]["Labels"].get("engine.test/cgroup")
        if key:
            self.removed.add(key)
            self.oom.discard(key)
            # podman made it in every hierarchy, with conmon's cgroup inside: children first.
            for ctl in os.listdir("/sys/fs/cgroup"):
                top = f"/sys/fs/cgroup/{ctl}/node-agent-{self.node}/{key}"
                for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(d)
                    except OSError:
                        pass

    def terminated(self, info):
        s = info["State"]
        code = s["ExitCode"]
        oom = s.get("OOMKilled") or info["Config"]["Labels"].get("engine.test/cgroup") in self.oom
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        return {"terminated": {"exitCode": code, "reason": reason, "startedAt": podman_time(s.get("StartedAt")),
                               "finishedAt": podman_time(s.get("FinishedAt")),
                               "containerID": "podman://" + info["Id"]}}

    def report(self, pod, st, mine, waiting, policy):
        meta, spec = pod["metadata"], pod["spec"]
        statuses, running, done, failed = [], 0, 0, 0
        pod_ip = None
        for c in spec["containers"]:
            name, info = c["name"], mine.get(c["name"])
            cs = {"name": name, "image": c["image"], "imageID": "", "ready": False,
                  "restartCount": st["restarts"].get(name, 0), "started": False}
            if name in st["last"]:
                cs["lastState"] = st["last"][name]
            if info is None:
                reason, msg = waiting.get(name, ("ContainerCreating", ""))
                cs["state"] = {"waiting": {"reason": reason, "message": msg}}
            else:
                cs["containerID"] = "podman://" + info["Id"]
                cs["imageID"] = info.get("Image", "")
                s = info["State"]
                if s["Status"] == "running":
                    cs["state"] = {"running": {"startedAt": podman_time(s.get("StartedAt"))}}
                    cs["ready"] = cs["started"] = True
                    running += 1
                    pod_ip = pod_ip or info["NetworkSettings"].get("IPAddress") or None
                elif s["Status"] in ("exited", "stopped"):
                    cs["state"] = self.terminated(info)
                    done += 1
                    failed += s["ExitCode"] != 0
                else:
                    cs["state"] = {"waiting": {"reason": "ContainerCreating", "message": s["Status"]}}
            statuses.append(cs)
        n = len(spec["containers"])
        if done == n and policy == "Never" or done == n and policy == "OnFailure" and not failed:
            phase = "Failed" if failed else "Succeeded"
        elif running or done or any(st["restarts"].values()):
            phase = "Running"
        else:
            phase = "Pending"
        t = rfc3339()
        old = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}

        def cond(type_, ok, reason=None):
            status = "True" if ok else "False"
            prev = old.get(type_, {})
            c = {"type": type_, "status": status,
                 "lastTransitionTime": prev.get("lastTransitionTime", t) if prev.get("status") == status else t}
            if reason and not ok:
                c["reason"] = reason
            return c

        ready = running == n
        reason = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
        conditions = [old.get("PodScheduled") or cond("PodScheduled", True),
                      cond("PodReadyToStartContainers", st["volumes"]),
                      cond("Initialized", True),
                      cond("ContainersReady", ready, reason),
                      cond("Ready", ready, reason)]
        status = {"phase": phase, "conditions": conditions, "containerStatuses": statuses,
                  "hostIP": self.a.node_ip, "hostIPs": [{"ip": self.a.node_ip}], "startTime": st["start"]}
        if pod_ip:
            status["podIP"], status["podIPs"] = pod_ip, [{"ip": pod_ip}]
        key = json.dumps(status, sort_keys=True)
        if st.get("reported") == key:
            return
        self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {"status": status})
        st["reported"] = key
        if phase != st.get("phase"):
            log.info("pod %s/%s: %s", meta["namespace"], meta["name"], phase)
            st["phase"] = phase

    def terminate(self, pod, mine):
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        grace = meta.get("deletionGracePeriodSeconds", 30)
        try:
            for c in mine.values():
                if c["State"]["Status"] == "running":
                    self.event(pod, "Normal", "Killing", f"Stopping container {c['Config']['Labels']['io.kubernetes.container.name']}")
                    podman("stop", "-t", str(grace), c["Id"], check=False, timeout=grace + 60)
            for c in mine.values():
                self.remove(c)
            shutil.rmtree(os.path.join(self.root, "pods", uid), ignore_errors=True)
            try:
                self.api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", {
                    "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid}})
            except ApiError as e:
                if e.status not in (404, 409):
                    raise
            log.info("pod %s/%s: deleted", ns, name)
        except Exception as e:
            log.exception("deleting %s/%s: %s", ns, name, e)
        finally:
            self.pods.pop(uid, None)
            self.terminating.discard(uid)
            self.wake.set()

    def event(self, pod, type_, reason, message):
        meta = pod["metadata"]
        try:
            self.api.call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": meta["name"] + ".", "namespace": meta["namespace"]},
                "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": meta["namespace"],
                                   "name": meta["name"], "uid": meta["uid"]},
                "type": type_, "reason": reason, "message": message[:1024],
                "source": {"component": "kubelet", "host": self.node},
                "firstTimestamp": rfc3339(), "lastTimestamp": rfc3339(), "count": 1})
        except Exception as e:
            log.warning("event: %s", e)

    # ------------------------------------------------------------ building a container
    def object(self, kind, ns, name, optional):
        try:
            return self.api.get(f"/api/v1/namespaces/{ns}/{kind}s/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise NotReady("CreateContainerConfigError", f'{kind} "{name}" not found')
            raise

    def data(self, kind, ns, name, optional):
        """The decoded data of a ConfigMap or Secret (None if optional and absent)."""
        obj = self.object(kind, ns, name, optional)
        if obj is None:
            return None
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
        out = {k: v.encode() for k, v in obj.get("data", {}).items()}
        out.update({k: base64.b64decode(v) for k, v in obj.get("binaryData", {}).items()})
        return out

    def field(self, pod, path):
        meta = pod["metadata"]
        simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "spec.nodeName": self.node,
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                  "status.hostIP": self.a.node_ip, "status.podIP": pod.get("status", {}).get("podIP", "")}
        if path in simple:
            return simple[path]
        m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
        if m:
            return meta.get(m.group(1), {}).get(m.group(2), "")
        raise NotReady("CreateContainerConfigError", f"unsupported fieldPath {path}")

    def resource_field(self, c, ref):
        res = ref["resource"]
        kind, _, name = res.partition(".")
        v = c.get("resources", {}).get(kind, {}).get(name)
        total = {"cpu": self.a.cpu, "memory": quantity(self.a.memory)}[name]
        value = quantity(v) if v is not None else total
        divisor = quantity(ref.get("divisor", "1"))
        return str(int(-(-value // divisor)))

    def env(self, pod, c):
        ns = pod["metadata"]["namespace"]
        host, port = self.a.api_host, str(self.a.api_port)
        env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
               "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{host}:{port}"}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            for kind in ("configMap", "secret"):
                ref = src.get(kind + "Ref")
                if ref:
                    data = self.data(kind.lower(), ns, ref["name"], ref.get("optional", False)) or {}
                    env.update({prefix + k: v.decode() for k, v in data.items()})
        for e in c.get("env", []):
            vf = e.get("valueFrom")
            if vf is None:
                env[e["name"]] = expand(e.get("value", ""), env)
            elif "fieldRef" in vf:
                env[e["name"]] = self.field(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[e["name"]] = self.resource_field(c, vf["resourceFieldRef"])
            else:
                kind = "configMap" if "configMapKeyRef" in vf else "secret"
                ref = vf[kind + "KeyRef"]
                data = self.data(kind.lower(), ns, ref["name"], ref.get("optional", False))
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise NotReady("CreateContainerConfigError",
                                   f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}")
                env[e["name"]] = data[ref["key"]].decode()
        return env

    def volumes(self, pod):
        """Writes every volume of the pod under <root>/pods/<uid>/volumes/."""
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta["namespace"]
        base = os.path.join(self.root, "pods", meta["uid"], "volumes")
        fs_group = spec.get("securityContext", {}).get("fsGroup")
        for v in spec.get("volumes", []):
            d = os.path.join(base, v["name"])
            os.makedirs(d, exist_ok=True)
            files = {}  # relative path -> (bytes, mode)
            if "emptyDir" in v:
                os.chmod(d, 0o777)  # as the kubelet makes it: writable by any uid
            elif "configMap" in v or "secret" in v:
                files = self.keys(v.get("configMap") or v.get("secret"), "configMap" in v, ns,
                                  (v.get("configMap") or v["secret"]).get("defaultMode", 0o644))
            elif "downwardAPI" in v:
                files = self.downward(pod, v["downwardAPI"]["items"], v["downwardAPI"].get("defaultMode", 0o644))
            elif "projected" in v:
                mode = v["projected"].get("defaultMode", 0o644)
                for s in v["projected"]["sources"]:
                    if "serviceAccountToken" in s:
                        files[s["serviceAccountToken"]["path"]] = (self.token(pod, s["serviceAccountToken"]), mode)
                    elif "downwardAPI" in s:
                        files.update(self.downward(pod, s["downwardAPI"]["items"], mode))
                    elif "configMap" in s or "secret" in s:
                        files.update(self.keys(s.get("configMap") or s["secret"], "configMap" in s, ns, mode))
                    else:
                        raise NotReady("ContainerCreating", f"unsupported projected source {list(s)}")
            else:
                raise NotReady("ContainerCreating", f"unsupported volume type in {v['name']}")
            for rel, (content, m) in files.items():
                p = os.path.join(d, rel)
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(content)
                os.chmod(p, m)
                if fs_group is not None:
                    os.chown(p, -1, fs_group)
            if fs_group is not None:
                os.chown(d, -1, fs_group)

    def keys(self, src, is_cm, ns, default_mode):
        name = src.get("name") or src.get("secretName")  # a secret volume says secretName
        data = self.data("configmap" if is_cm else "secret", ns, name, src.get("optional", False))
        if data is None:
            return {}
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        out = {}
        for it in items:
            if it["key"] not in data:
                raise NotReady("ContainerCreating", f"key {it['key']} not in {name}")
            out[it["path"]] = (data[it["key"]], it.get("mode", src.get("defaultMode", default_mode)))
        return out

    def downward(self, pod, items, mode):
        out = {}
        for it in items:
            if "fieldRef" in it:
                out[it["path"]] = (self.field(pod, it["fieldRef"]["fieldPath"]).encode(), it.get("mode", mode))
        return out

    def token(self, pod, src):
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName", "default")
        spec = {"expirationSeconds": src.get("expirationSeconds", 3607),
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}}
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        r = self.api.call("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return r["status"]["token"].encode()

    def run_args(self, pod, c, st):
        meta, spec = pod["metadata"], pod["spec"]
        name = c["name"]
        env = self.env(pod, c)
        psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
        sc = {**psc, **csc}
        if sc.get("runAsNonRoot"):
            user = sc.get("runAsUser")
            if user is None:
                user = podman("image", "inspect", "--format", "{{.Config.User}}", c["image"]).stdout.strip()
                user = user.split(":")[0] or "0"
            if str(user) in ("0", "root"):
                raise NotReady("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")
        attempt = st["restarts"].get(name, 0)
        args = ["--name", f"k8s_{name}_{meta['name']}_{meta['namespace']}_{meta['uid'][:8]}_{attempt}",
                "--label", f"{LABEL}={self.node}", "--label", f"io.kubernetes.pod.uid={meta['uid']}",
                "--label", f"io.kubernetes.pod.name={meta['name']}",
                "--label", f"io.kubernetes.pod.namespace={meta['namespace']}",
                "--label", f"io.kubernetes.container.name={name}",
                "--pull=never", "--hostname", meta["name"][:63]]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        base = os.path.join(self.root, "pods", meta["uid"], "volumes")
        memory_volumes = {v["name"] for v in spec.get("volumes", [])
                          if v.get("emptyDir", {}).get("medium") == "Memory"}
        for m in c.get("volumeMounts", []):
            if m["name"] in memory_volumes:
                args += ["--mount", f"type=tmpfs,destination={m['mountPath']},tmpfs-mode=1777"]
                continue
            src = os.path.join(base, m["name"], m.get("subPath", ""))
            args += ["--volume", f"{src}:{m['mountPath']}:{'ro' if m.get('readOnly') else 'rw'}"]
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            mem = int(quantity(limits["memory"]))
            key = f"{meta['uid']}-{name}-{attempt}"
            parent = self.memory_cgroup(key, mem)
            # The container's own limit is a little higher, so the kill happens in the parent.
            args += ["--cgroup-parent", parent, "--label", f"engine.test/cgroup={key}",
                     "--memory", str(mem + 2**20), "--memory-swap", str(mem + 2**20)]
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu']):g}"]
        if "runAsUser" in sc or "runAsGroup" in sc:
            args += ["--user", f"{sc.get('runAsUser', 0)}:{sc.get('runAsGroup', sc.get('runAsUser', 0))}"]
        if psc.get("fsGroup") is not None:
            args += ["--group-add", str(psc["fsGroup"])]
        for g in psc.get("supplementalGroups", []):
            args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        if sc.get("privileged"):
            args += ["--privileged"]
        if c.get("workingDir"):
            args += ["--workdir", c["workingDir"]]
        command = [expand(x, env) for x in c.get("command", [])]
        cargs = [expand(x, env) for x in c.get("args", [])]
        if command:
            # Like Kubernetes: `command` replaces the ENTRYPOINT and drops the image's CMD.
            args += ["--entrypoint", json.dumps(command)]
        return args + [c["image"], *cargs]


def expand(s, env):
    """Kubernetes' $(VAR) expansion ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


class LogHandler(http.server.BaseHTTPRequestHandler):
    """GET /containerLogs/<ns>/<pod>/<container>: what `kubectl logs` asks a kubelet."""

    agent = None

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        parts = u.path.strip("/").split("/")
        q = urllib.parse.parse_qs(u.query)
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404)
            return
        _, ns, pod, ctr = parts
        ids = podman("ps", "-aq", "--sort", "created", "--filter", f"label={LABEL}={self.agent.node}",
                     "--filter", f"label=io.kubernetes.pod.namespace={ns}",
                     "--filter", f"label=io.kubernetes.pod.name={pod}",
                     "--filter", f"label=io.kubernetes.container.name={ctr}").stdout.split()
        if not ids:
            self.send_error(404, f"container {ctr} of {ns}/{pod} not found")
            return
        cmd = ["podman", "logs"]
        if q.get("follow", ["false"])[0] == "true":
            cmd.append("--follow")
        if "tailLines" in q:
            cmd += ["--tail", q["tailLines"][0]]
        if q.get("timestamps", ["false"])[0] == "true":
            cmd.append("--timestamps")
        if "sinceSeconds" in q:
            cmd += ["--since", q["sinceSeconds"][0] + "s"]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        p = subprocess.Popen([*cmd, ids[-1]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while chunk := p.stdout.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            p.kill()
            p.wait()

    def log_message(self, fmt, *args):
        log.debug("logs: " + fmt, *args)


def serve_logs(agent, a):
    """HTTPS with the node's certificate; clients must present one signed by the cluster CA."""
    LogHandler.agent = agent
    srv = http.server.ThreadingHTTPServer((a.listen, a.port), LogHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--node-name", required=True)
    p.add_argument("--server", required=True, help="API server URL (from the host)")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True, help="client certificate for system:node:<name>")
    p.add_argument("--key", required=True)
    p.add_argument("--api-host", default="10.88.0.1", help="the API server's address as pods see it")
    p.add_argument("--api-port", type=int, help="(default: --server's port)")
    p.add_argument("--node-ip", default="127.0.0.1", help="where the API server reaches this agent")
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=10250, help="log server port")
    p.add_argument("--root", required=True, help="state directory (pod volumes)")
    p.add_argument("--cpu", type=int, default=os.cpu_count())
    p.add_argument("--memory", default=f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**20}Mi")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--version", default="v0.0.0", help="reported kubeletVersion")
    p.add_argument("-v", action="store_true")
    a = p.parse_args()
    a.api_port = a.api_port or urllib.parse.urlsplit(a.server).port or 443
    logging.basicConfig(level=logging.DEBUG if a.v else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # containers keep running, as with a kubelet
    agent = Agent(a)
    agent.register()
    for target in (agent.heartbeat, agent.watch, lambda: serve_logs(agent, a)):
        threading.Thread(target=target, daemon=True).start()
    log.info("node %s ready; pods reach the API server at https://%s:%d", a.node_name, a.api_host, a.api_port)
    agent.loop()


if __name__ == "__main__":
    main()
