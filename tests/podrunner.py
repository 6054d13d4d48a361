"""Run a Kubernetes Pod or Job with podman the way a kubelet would, for tests.

    result = PodRunner(workdir).run(manifests)   # YAML text, or objects: a Pod or Job plus
                                                 # the ConfigMaps and Secrets it refers to
    result.phase                                 # Succeeded | Failed | Pending
    result.status("put").exit_code

What it does, in the kubelet's order:

- volumes: ``emptyDir`` as a fresh folder (mode 0777, as the kubelet makes it; with the pod's
  ``fsGroup``, group fsGroup and mode 02777, as the kubelet's ownership change leaves it),
  ``configMap`` and ``secret`` as read-only folders of files (``items``, ``defaultMode``,
  ``optional``),
  ``hostPath`` as the given path; any other volume type is an error naming it;
- init containers one at a time, in order; one that fails makes the pod Failed (restartPolicy
  Never semantics: nothing is restarted). A native sidecar (an init container with
  ``restartPolicy: Always``) is started and left running, and the next init container starts;
- then all main containers at once; when they have all exited, SIGTERM to the native sidecars in
  reverse order, SIGKILL after what is left of ``terminationGracePeriodSeconds`` (default 30);
- a native sidecar's exec ``startupProbe`` runs (``podman exec``) until it passes before the
  next container starts, as the kubelet does; one that never passes fails the pod;
- ``env`` (``value``, ``configMapKeyRef``, ``secretKeyRef``, ``fieldRef``) over ``envFrom``
  (``configMapRef``, ``secretRef``, ``prefix``), with ``$(VAR)`` expansion in env values,
  command and args; ``command`` replaces the image's entrypoint and drops its CMD, ``args``
  replaces the CMD; ``workingDir``;
- ``securityContext`` of pod and container: ``runAsUser``, ``runAsGroup``, ``runAsNonRoot``
  (checked against the image's numeric USER; a violation leaves the pod Pending with
  CreateContainerConfigError, as the kubelet does), ``fsGroup`` and ``supplementalGroups``,
  ``readOnlyRootFilesystem`` (no tmpfs on /tmp either: only mounted volumes are writable),
  ``allowPrivilegeEscalation: false``, ``capabilities``;
- the termination message: a writable file at ``terminationMessagePath`` (default
  /dev/termination-log), read back after the container exits (``FallbackToLogsOnError`` too).

Differences from a kubelet, on purpose: every container shares the host's network (so a test's
S3 server on loopback is reachable), images are never pulled (``--pull=never``), other probes
and resources are ignored, and a container that exits is never restarted (a sidecar that exits early
is reported with ``exited_early``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from podman_support import RUN_FLAGS, podman

INIT, SIDECAR, MAIN = "init", "sidecar", "main"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSpecError(ValueError):
    """The pod uses something this runner cannot do, or refers to something it was not given."""


class ConfigError(Exception):
    """What the kubelet reports as CreateContainerConfigError: the container cannot start."""


@dataclass
class ContainerStatus:
    """One container as ``kubectl get pod -o yaml`` would show it after the pod ended."""

    name: str
    kind: str
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    logs: str = ""
    stderr: str = ""
    started: bool = False
    exited_early: bool = False
    signalled: str = ""
    probes: int = 0  # startup probe runs (a native sidecar's)

    @property
    def output(self) -> str:
        return self.logs + self.stderr


@dataclass
class PodResult:
    """The pod's phase, every container's status, and the host folders of its volumes."""

    name: str
    phase: str
    containers: list[ContainerStatus] = field(default_factory=list)
    volumes: dict[str, Path] = field(default_factory=dict)
    reason: str = ""

    def status(self, name: str) -> ContainerStatus:
        for status in self.containers:
            if status.name == name:
                return status
        raise KeyError(f"no container {name!r} ran in pod {self.name}: "
                       f"{[s.name for s in self.containers]}")

    def describe(self) -> str:
        """Everything a test needs to see when it fails: phase, codes, messages, logs."""
        lines = [f"pod {self.name}: {self.phase} {self.reason}".rstrip()]
        for s in self.containers:
            lines.append(f"--- {s.kind} {s.name}: exit {s.exit_code} {s.reason} "
                         f"{'(exited early) ' if s.exited_early else ''}{s.signalled}")
            if s.message:
                lines.append(f"    termination message: {s.message}")
            lines.append(s.output.rstrip()[-4000:])
        return "\n".join(lines)


def load_manifests(source: str | dict[str, Any] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects from YAML text (one or many documents), one object, or a list of objects."""
    if isinstance(source, str):
        return [doc for doc in yaml.safe_load_all(source) if doc]
    if isinstance(source, dict):
        if source.get("kind") == "List":
            return list(source.get("items", []))
        return [source]
    return [doc for doc in source if doc]


@dataclass
class _Pod:
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]


def _pod_of(objects: list[dict[str, Any]], name: str | None = None) -> _Pod:
    workloads = [o for o in objects if o.get("kind") in {"Pod", "Job"}
                 and (name is None or (o.get("metadata") or {}).get("name") == name)]
    if len(workloads) != 1:
        found = [f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}" for o in workloads]
        raise PodSpecError(f"expected exactly one Pod or Job{f' named {name!r}' if name else ''} "
                           f"among the objects, found {found or 'none'}")
    workload = workloads[0]
    meta = workload.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    if workload["kind"] == "Pod":
        spec = workload.get("spec") or {}
        name = meta.get("name") or "pod"
        labels, annotations = dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})
    else:
        template = (workload.get("spec") or {}).get("template") or {}
        spec = template.get("spec") or {}
        tmeta = template.get("metadata") or {}
        name = f"{meta.get('name') or 'job'}-{secrets.token_hex(3)[:5]}"
        labels = {**(tmeta.get("labels") or {}), "job-name": meta.get("name") or "job"}
        annotations = dict(tmeta.get("annotations") or {})
    if not spec.get("containers"):
        raise PodSpecError(f"{workload['kind']} {meta.get('name')!r} has no containers")
    return _Pod(name, namespace, secrets.token_hex(16), labels, annotations, spec)


class PodRunner:
    """Runs pods with podman; each run gets its own folder under ``workdir`` for its volumes."""

    def __init__(self, workdir: Path, *, timeout: float = 600,
                 extra_run_args: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.extra_run_args = list(extra_run_args)

    # ---- entry point -------------------------------------------------------------------

    def run(self, manifests: str | dict[str, Any] | Iterable[dict[str, Any]],
            objects: Iterable[dict[str, Any]] = (), *, name: str | None = None) -> PodResult:
        """Run the Pod or Job in ``manifests`` (the one named ``name`` when there are several)
        to completion and report how it ended. Other kinds than Pod, Job, ConfigMap and Secret
        (a ServiceAccount, say) are ignored."""
        everything = load_manifests(manifests) + list(objects)
        pod = _pod_of(everything, name)
        self.configmaps = {o["metadata"]["name"]: _configmap_data(o) for o in everything
                           if o.get("kind") == "ConfigMap"}
        self.secrets = {o["metadata"]["name"]: _secret_data(o) for o in everything
                        if o.get("kind") == "Secret"}
        self.pod = pod
        self.run_id = secrets.token_hex(4)
        self.folder = self.workdir / f"{pod.name}-{self.run_id}"
        self.folder.mkdir(parents=True)
        self.deadline = time.monotonic() + float(pod.spec.get("activeDeadlineSeconds")
                                                 or self.timeout)
        result = PodResult(pod.name, "Pending")
        self.started: list[tuple[str, ContainerStatus]] = []  # (podman name, status)
        try:
            result.volumes = self._volumes(pod.spec.get("volumes") or [])
            self._run_pod(result)
        except _PodStop:
            pass
        finally:
            for podman_name, _status in self.started:
                podman("rm", "--force", "--time", "0", podman_name, check=False)
        return result

    # ---- the kubelet's order -----------------------------------------------------------

    def _run_pod(self, result: PodResult) -> None:
        spec = self.pod.spec
        sidecars: list[tuple[str, ContainerStatus]] = []
        for container in spec.get("initContainers") or []:
            if container.get("restartPolicy") == "Always":
                status = ContainerStatus(container["name"], SIDECAR)
                result.containers.append(status)
                podman_name = self._start(container, status, result)
                sidecars.append((podman_name, status))
                if not self._started(podman_name, container, status):
                    result.phase, result.reason = "Failed", f"{status.name}: {status.message}"
                    self._stop_sidecars(sidecars, spec)
                    return
                continue
            status = ContainerStatus(container["name"], INIT)
            result.containers.append(status)
            podman_name = self._start(container, status, result)
            self._wait([(podman_name, status)], result)
            if status.exit_code != 0:
                result.phase, result.reason = "Failed", f"init container {status.name} failed"
                self._stop_sidecars(sidecars, spec)
                return
        mains = []
        for container in spec["containers"]:
            status = ContainerStatus(container["name"], MAIN)
            result.containers.append(status)
            mains.append((self._start(container, status, result), status))
        self._wait(mains, result)
        for podman_name, status in sidecars:
            status.exited_early = not self._running(podman_name)
        self._stop_sidecars(sidecars, spec)
        failed = [s.name for _, s in mains if s.exit_code != 0]
        result.phase = "Failed" if failed else "Succeeded"
        if failed:
            result.reason = f"containers failed: {', '.join(failed)}"

    def _started(self, podman_name: str, container: dict[str, Any],
                 status: ContainerStatus) -> bool:
        """A native sidecar's exec ``startupProbe``, as the kubelet runs it before it starts the
        next container: every ``periodSeconds`` until it passes, at most ``failureThreshold``
        times (a kubelet would then restart the container; here the pod fails). Its
        ``timeoutSeconds`` is not enforced: ``podman exec``'s own start would count against it."""
        probe = container.get("startupProbe")
        if not probe:
            return True
        if set(probe) - {"exec", "periodSeconds", "failureThreshold", "initialDelaySeconds",
                         "timeoutSeconds", "successThreshold"}:
            raise ConfigError(f"{status.name}: only exec startup probes are run")
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        for _ in range(int(probe.get("failureThreshold", 3))):
            done = podman("exec", podman_name, *probe["exec"]["command"], check=False,
                          timeout=float(probe.get("timeoutSeconds", 1)) + 30)
            status.probes += 1
            if done.returncode == 0:
                return True
            if not self._running(podman_name):
                break
            time.sleep(float(probe.get("periodSeconds", 10)))
        status.reason, status.message = "StartupProbeFailed", (
            f"startup probe failed {status.probes} times: {done.stderr.strip()[-500:]}")
        return False

    def _stop_sidecars(self, sidecars: list[tuple[str, ContainerStatus]],
                       spec: dict[str, Any]) -> None:
        """SIGTERM to the sidecars, last started first; SIGKILL when the grace period is over."""
        grace_end = time.monotonic() + float(spec.get("terminationGracePeriodSeconds", 30))
        for podman_name, status in reversed(sidecars):
            if self._running(podman_name):
                podman("kill", "--signal", "TERM", podman_name, check=False)
                status.signalled = "SIGTERM"
                remaining = max(0.0, grace_end - time.monotonic())
                if not self._wait_exit(podman_name, remaining):
                    podman("kill", "--signal", "KILL", podman_name, check=False)
                    self._wait_exit(podman_name, 30)
                    status.signalled = "SIGTERM, then SIGKILL after the grace period"
            self._collect(podman_name, status)

    # ---- containers --------------------------------------------------------------------

    def _start(self, container: dict[str, Any], status: ContainerStatus,
               result: PodResult) -> str:
        podman_name = f"pr-{self.run_id}-{container['name']}"[:63]
        try:
            command = self._create_command(container, podman_name, result)
        except ConfigError as exc:
            status.reason, status.message = "CreateContainerConfigError", str(exc)
            result.phase, result.reason = "Pending", f"{status.name}: {exc}"
            raise _PodStop() from None
        done = podman(*command, check=False, timeout=120)
        self.started.append((podman_name, status))
        if done.returncode != 0:
            status.reason, status.message = "RunContainerError", done.stderr.strip()[-2000:]
            status.exit_code = 128
            result.phase, result.reason = "Failed", f"{status.name}: cannot start: {status.message}"
            raise _PodStop()
        status.started = True
        return podman_name

    def _create_command(self, container: dict[str, Any], podman_name: str,
                        result: PodResult) -> list[str]:
        env = self._env(container)
        command = ["run", "--detach", "--name", podman_name, *RUN_FLAGS, "--network=host",
                   "--hostname", self.pod.name[:63],
                   "--label", f"catalog-agent-podrunner={self.run_id}",
                   *self._security(container), *self.extra_run_args]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        for mount in container.get("volumeMounts") or []:
            command += ["--volume", self._mount(mount, result)]
        message_file = self.folder / "termination" / container["name"]
        message_file.parent.mkdir(exist_ok=True)
        message_file.write_bytes(b"")
        message_file.chmod(0o666)
        path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        command += ["--volume", f"{message_file}:{path}:rw"]
        if container.get("workingDir"):
            command += ["--workdir", _expand(container["workingDir"], env)]
        args = [_expand(a, env) for a in container.get("args") or []]
        if container.get("command"):
            # Kubernetes: command replaces the entrypoint and drops the image's CMD; podman's
            # --entrypoint does both.
            command += ["--entrypoint", json.dumps([_expand(c, env) for c in container["command"]])]
        image = container.get("image")
        if not image:
            raise PodSpecError(f"container {container['name']!r} has no image")
        command.append(image)
        command += args
        return command

    def _wait(self, containers: list[tuple[str, ContainerStatus]], result: PodResult) -> None:
        """Wait for each container to exit, within the pod's deadline; then collect its status."""
        for podman_name, status in containers:
            if not self._wait_exit(podman_name, self.deadline - time.monotonic()):
                for name, _ in containers:
                    podman("kill", "--signal", "KILL", name, check=False)
                    self._wait_exit(name, 30)
                result.phase, result.reason = "Failed", "DeadlineExceeded"
                for name, st in containers:
                    self._collect(name, st)
                raise _PodStop()
            self._collect(podman_name, status)

    def _wait_exit(self, podman_name: str, seconds: float) -> bool:
        """True once the container has exited, False if it still runs after ``seconds``."""
        # One `podman wait` process rather than a podman call per poll: CPU is scarce here.
        try:
            podman("wait", "--interval", "300ms", podman_name, check=False,
                   timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            return not self._running(podman_name)
        return not self._running(podman_name)

    def _running(self, podman_name: str) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", podman_name, check=False)
        return out.stdout.strip() == "true"

    def _collect(self, podman_name: str, status: ContainerStatus) -> None:
        state = podman("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}",
                       podman_name, check=False).stdout.split()
        if state:
            status.exit_code = int(state[0])
            status.reason = "OOMKilled" if state[1:] == ["true"] else (
                "Completed" if status.exit_code == 0 else "Error")
        logs = podman("logs", podman_name, check=False)
        status.logs, status.stderr = logs.stdout, logs.stderr
        message_file = self.folder / "termination" / status.name
        message = message_file.read_bytes()[:4096].decode("utf-8", "replace")
        container = self._container(status.name)
        if (not message and status.exit_code not in (0, None)
                and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"):
            tail = "\n".join(status.output.splitlines()[-80:])
            message = tail[-2048:]
        status.message = message

    def _container(self, name: str) -> dict[str, Any]:
        for container in [*(self.pod.spec.get("initContainers") or []), *self.pod.spec["containers"]]:
            if container["name"] == name:
                return container
        return {}

    # ---- security context --------------------------------------------------------------

    def _security(self, container: dict[str, Any]) -> list[str]:
        pod_ctx = self.pod.spec.get("securityContext") or {}
        ctx = {**{k: v for k, v in pod_ctx.items() if k in {"runAsUser", "runAsGroup",
                                                            "runAsNonRoot"}},
               **(container.get("securityContext") or {})}
        args: list[str] = []
        user = ctx.get("runAsUser")
        group = ctx.get("runAsGroup")
        if ctx.get("runAsNonRoot"):
            effective = user if user is not None else self._image_uid(container.get("image", ""))
            if effective is None:
                raise ConfigError("container has runAsNonRoot and image has non-numeric user, "
                                  "cannot verify user is non-root")
            if effective == 0:
                raise ConfigError("container has runAsNonRoot and image will run as root")
        if user is not None or group is not None:
            uid = user if user is not None else self._image_uid(container.get("image", "")) or 0
            args += ["--user", f"{uid}:{group}" if group is not None else str(uid)]
        for gid in [pod_ctx.get("fsGroup"), *(pod_ctx.get("supplementalGroups") or [])]:
            if gid is not None:
                args += ["--group-add", str(gid)]
        if ctx.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if ctx.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = ctx.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", cap]
        for cap in caps.get("add") or []:
            args += ["--cap-add", cap]
        if ctx.get("privileged"):
            args += ["--privileged"]
        return args

    def _image_uid(self, image: str) -> int | None:
        user = podman("image", "inspect", "--format", "{{.Config.User}}", image,
                      check=False).stdout.strip()
        uid = user.split(":", 1)[0]
        if not uid:
            return 0
        return int(uid) if uid.isdigit() else None

    # ---- environment -------------------------------------------------------------------

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref, table, what = source["configMapRef"], self.configmaps, "configmap"
            elif "secretRef" in source:
                ref, table, what = source["secretRef"], self.secrets, "secret"
            else:
                raise PodSpecError(f"envFrom entry {source} is not supported")
            if ref["name"] not in table:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{what} "{ref["name"]}" not found')
            for key, value in table[ref["name"]].items():
                env[prefix + key] = value.decode() if isinstance(value, bytes) else value
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item or "valueFrom" not in item:
                env[name] = _expand(str(item.get("value", "")), env)
                continue
            value = self._value_from(item["valueFrom"], name)
            if value is not None:
                env[name] = value
        return env

    def _value_from(self, source: dict[str, Any], name: str) -> str | None:
        for kind, table, what in (("configMapKeyRef", self.configmaps, "configmap"),
                                  ("secretKeyRef", self.secrets, "secret")):
            if kind in source:
                ref = source[kind]
                data = table.get(ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    missing = (f'{what} "{ref["name"]}" not found' if data is None
                               else f'couldn\'t find key {ref["key"]} in {what} {ref["name"]}')
                    raise ConfigError(missing)
                value = data[ref["key"]]
                return value.decode() if isinstance(value, bytes) else value
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        raise PodSpecError(f"env {name}: valueFrom {sorted(source)} is not supported")

    def _field(self, path: str) -> str:
        pod = self.pod
        simple = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
                  "metadata.uid": pod.uid, "spec.nodeName": "podrunner",
                  "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            table = pod.labels if match.group(1) == "labels" else pod.annotations
            return table.get(match.group(2), "")
        raise PodSpecError(f"fieldRef {path} is not supported")

    # ---- volumes -----------------------------------------------------------------------

    def _volumes(self, volumes: list[dict[str, Any]]) -> dict[str, Path]:
        made: dict[str, Path] = {}
        for volume in volumes:
            name = volume["name"]
            folder = self.folder / "volumes" / name
            if "emptyDir" in volume:
                folder.mkdir(parents=True)
                folder.chmod(0o777)
                fs_group = (self.pod.spec.get("securityContext") or {}).get("fsGroup")
                if fs_group is not None:  # the kubelet: the volume's group, and setgid
                    os.chown(folder, -1, int(fs_group))
                    folder.chmod(0o2777)
            elif "configMap" in volume or "secret" in volume:
                ref = volume.get("configMap") or volume.get("secret") or {}
                is_cm = "configMap" in volume
                source_name = ref.get("name") if is_cm else ref.get("secretName")
                data = (self.configmaps if is_cm else self.secrets).get(source_name)
                if data is None:
                    if not ref.get("optional"):
                        raise PodSpecError(f"volume {name}: {'configmap' if is_cm else 'secret'} "
                                           f"{source_name!r} was not given to the runner")
                    data = {}
                _write_files(folder, data, ref.get("items"), ref.get("defaultMode", 0o644))
            elif "hostPath" in volume:
                folder = Path(volume["hostPath"]["path"])
            else:
                kinds = sorted(set(volume) - {"name"})
                raise PodSpecError(f"volume {name}: type {kinds} is not supported by the runner")
            made[name] = folder
        return made

    def _mount(self, mount: dict[str, Any], result: PodResult) -> str:
        name = mount["name"]
        if name not in result.volumes:
            raise PodSpecError(f"volumeMount {name!r} names no volume of the pod")
        source = result.volumes[name]
        volume = next(v for v in self.pod.spec.get("volumes") or [] if v["name"] == name)
        if mount.get("subPath"):
            source = source / mount["subPath"]
            if "emptyDir" in volume and not source.exists():
                source.mkdir(parents=True)
                source.chmod(0o777)
        read_only = mount.get("readOnly") or "configMap" in volume or "secret" in volume
        return f"{source}:{mount['mountPath']}:{'ro' if read_only else 'rw'}"


class _PodStop(Exception):
    """The pod cannot go on (result already says why)."""


def _configmap_data(obj: dict[str, Any]) -> dict[str, str | bytes]:
    data: dict[str, str | bytes] = dict(obj.get("data") or {})
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def _secret_data(obj: dict[str, Any]) -> dict[str, str | bytes]:
    data: dict[str, str | bytes] = {k: base64.b64decode(v) for k, v in
                                    (obj.get("data") or {}).items()}
    data.update(obj.get("stringData") or {})
    return data


def _write_files(folder: Path, data: dict[str, str | bytes], items: list[dict[str, Any]] | None,
                 default_mode: int) -> None:
    """The files a configMap or secret volume shows: every key, or only ``items`` at their paths."""
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    chosen = ([(i["key"], i["path"], i.get("mode", default_mode)) for i in items]
              if items else [(k, k, default_mode) for k in data])
    for key, relative, mode in chosen:
        if key not in data:
            raise PodSpecError(f"configMap/secret volume item: key {key!r} not found")
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        value = data[key]
        target.write_bytes(value if isinstance(value, bytes) else value.encode())
        target.chmod(mode)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, others stay."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def run_pod(workdir: Path, manifests: Any, objects: Iterable[dict[str, Any]] = (),
            timeout: float = 600, name: str | None = None) -> PodResult:
    """One-shot: ``PodRunner(workdir, timeout=timeout).run(manifests, objects, name=name)``."""
    return PodRunner(workdir, timeout=timeout).run(manifests, objects, name=name)
