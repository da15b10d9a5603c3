"""Consistency and security checks of the emrflow manifests that a schema cannot express.

Run by ./validate (in its venv, which has PyYAML) with every manifest file as an argument. It
checks, across all files at once:

- security posture of every pod template: non-root user, RuntimeDefault seccomp, no service
  account token, no service links, and per container no privilege escalation, a read-only root
  filesystem, all capabilities dropped, CPU and memory requests and limits; long-running
  containers have readiness and liveness probes on ports they declare;
- references: volume mounts name declared volumes, ConfigMaps/Secrets/claims exist (or are one of
  the placeholders that the operator creates), named ports exist, selectors of Services,
  StatefulSets, PodDisruptionBudgets and NetworkPolicies select some pod template, and the ports
  a NetworkPolicy opens are ports those pods serve;
- files: every absolute path a container is given (arguments, environment values, and the path
  values inside TOML files mounted from ConfigMaps) lies on one of the pod's volumes, and a path
  into a ConfigMap or Secret volume names one of its keys;
- embedded configs: TOML and JSON in ConfigMaps parse;
- Secrets: every Secret in the repository is a placeholder (annotated, all values REPLACE-ME);
- the ledger: the StatefulSet runs exactly as many peers as there are peer configs (ids 0..n-1)
  and genesis entries, each genesis address (peer and client) being its pod's stable name on the
  headless Service at that listener's port, every peer config has the same consensus parameters,
  the peer and client listeners are distinct container ports, and the NetworkPolicies let only
  ledger peers reach the peer port while some policy admits clients to the client port.

Prints one line per problem and exits 1 if there is any.
"""

import json
import posixpath
import sys
import tomllib

import yaml

PLACEHOLDER = "REPLACE-ME"
PLACEHOLDER_ANNOTATION = "emrflow.io/placeholder"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}

problems = []


def problem(obj, message):
    meta = obj["_doc"].get("metadata") or {}
    problems.append(f"{obj['_file']}: {obj['_doc'].get('kind')}/{meta.get('name')}: {message}")


def load(paths):
    objs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    objs.append({"_file": path, "_doc": doc})
    return objs


def name_of(obj):
    return (obj["_doc"].get("metadata") or {}).get("name")


def pod_template(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    return spec.get("template") or {}


def containers(pod_spec):
    for field in ("initContainers", "containers"):
        for c in pod_spec.get(field) or []:
            yield field, c


def selects(selector, labels):
    """Whether matchLabels-only `selector` selects `labels` (an empty selector selects all)."""
    if selector.get("matchExpressions"):
        return True  # not evaluated here; the schema checks its shape
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_posture(obj, pod_spec):
    kind = obj["_doc"]["kind"]
    if pod_spec.get("automountServiceAccountToken") is not False:
        problem(obj, "automountServiceAccountToken must be false (no pod talks to the API)")
    if pod_spec.get("enableServiceLinks") is not False:
        problem(obj, "enableServiceLinks must be false (EMRFLOW_* service variables collide "
                     "with emrflow's own settings)")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problem(obj, f"{field} must not be set")
    psc = pod_spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        problem(obj, "securityContext.runAsNonRoot must be true")
    if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
        problem(obj, "securityContext.runAsUser must be a non-zero uid")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problem(obj, "securityContext.seccompProfile.type must be RuntimeDefault")
    for field, c in containers(pod_spec):
        where = f"{field} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(obj, f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(obj, f"{where}: readOnlyRootFilesystem must be true")
        if sc.get("privileged"):
            problem(obj, f"{where}: must not be privileged")
        if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
            problem(obj, f"{where}: must not run as root")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problem(obj, f"{where}: capabilities.drop must contain ALL")
        if caps.get("add"):
            problem(obj, f"{where}: must not add capabilities")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (res.get(section) or {}):
                    problem(obj, f"{where}: resources.{section}.{resource} is missing")
        ports = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
        numbers = {p.get("containerPort") for p in c.get("ports") or []}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe)
            if p is None:
                if kind in LONG_RUNNING and field == "containers" and probe != "startupProbe":
                    problem(obj, f"{where}: {probe} is missing")
                continue
            for handler in ("tcpSocket", "grpc", "httpGet"):
                port = (p.get(handler) or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(obj, f"{where}: {probe} uses port {port!r}, not declared")
                if isinstance(port, int) and port not in numbers:
                    problem(obj, f"{where}: {probe} uses port {port}, not declared")


def object_keys(index, kind, name):
    """The keys of ConfigMap/Secret `name`, or None if no such object is in the repository."""
    obj = index.get((kind, name))
    if obj is None:
        return None
    doc = obj["_doc"]
    keys = set((doc.get("data") or {}).keys()) | set((doc.get("binaryData") or {}).keys())
    keys |= set((doc.get("stringData") or {}).keys())
    return keys


def volume_files(index, volume):
    """('configMap'|'secret', name, files) of a volume, or (other kind, None, None)."""
    for kind, ref_field, obj_kind in (("configMap", "name", "ConfigMap"),
                                      ("secret", "secretName", "Secret")):
        src = volume.get(kind)
        if src is not None:
            name = src.get(ref_field)
            keys = object_keys(index, obj_kind, name)
            items = src.get("items")
            if items:
                files = {i.get("path") for i in items}
            else:
                files = keys
            return kind, name, files
    return next(iter(k for k in volume if k != "name"), "unknown"), None, None


def check_references(obj, pod_spec, index, claims):
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    for v in volumes.values():
        for kind, ref_field, obj_kind in (("configMap", "name", "ConfigMap"),
                                          ("secret", "secretName", "Secret")):
            src = v.get(kind)
            if src is None:
                continue
            name = src.get(ref_field)
            keys = object_keys(index, obj_kind, name)
            if keys is None:
                if not src.get("optional"):
                    problem(obj, f"volume {v.get('name')}: no {obj_kind} {name} in the repository")
                continue
            for item in src.get("items") or []:
                if item.get("key") not in keys:
                    problem(obj, f"volume {v.get('name')}: {obj_kind} {name} has no key "
                                 f"{item.get('key')}")
        pvc = v.get("persistentVolumeClaim")
        if pvc is not None and pvc.get("claimName") not in claims:
            problem(obj, f"volume {v.get('name')}: no PersistentVolumeClaim "
                         f"{pvc.get('claimName')} in the repository")
    templates = {(t.get("metadata") or {}).get("name")
                 for t in (obj["_doc"].get("spec") or {}).get("volumeClaimTemplates") or []}
    for field, c in containers(pod_spec):
        where = f"{field} {c.get('name')}"
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes and m.get("name") not in templates:
                problem(obj, f"{where}: mounts {m.get('name')}, which is no volume of the pod")
        for e in c.get("envFrom") or []:
            for ref, obj_kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                r = e.get(ref)
                if r and not r.get("optional") and (obj_kind, r.get("name")) not in index:
                    problem(obj, f"{where}: envFrom {obj_kind} {r.get('name')} does not exist")
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            for ref, obj_kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                r = vf.get(ref)
                if not r or r.get("optional"):
                    continue
                keys = object_keys(index, obj_kind, r.get("name"))
                if keys is None or r.get("key") not in keys:
                    problem(obj, f"{where}: env {e.get('name')}: {obj_kind} {r.get('name')} "
                                 f"key {r.get('key')} does not exist")


def resolve(path, pod_spec, index, templates):
    """Where absolute `path` lives in the pod: None if fine, else a reason."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    best = None
    for _, c in containers(pod_spec):
        for m in c.get("volumeMounts") or []:
            mount = posixpath.normpath(m.get("mountPath", ""))
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                if best is None or len(mount) > len(best[0]):
                    best = (mount, m)
    if best is None:
        return "is on no volume of the pod (the root filesystem is read-only and holds no data)"
    mount, m = best
    if m.get("name") in templates:
        return None
    kind, name, files = volume_files(index, volumes.get(m.get("name"), {}))
    if kind not in ("configMap", "secret"):
        return None
    rest = posixpath.relpath(path, mount)
    if m.get("subPath"):
        return None
    if rest == ".":
        return None
    if files is not None and rest not in files:
        return f"is not a key of {kind} {name} (mounted at {mount})"
    return None


def toml_paths(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from toml_paths(v)
    elif isinstance(value, list):
        for v in value:
            yield from toml_paths(v)
    elif isinstance(value, str) and value.startswith("/"):
        yield value


def check_paths(obj, pod_spec, index, parsed_toml):
    templates = {(t.get("metadata") or {}).get("name")
                 for t in (obj["_doc"].get("spec") or {}).get("volumeClaimTemplates") or []}
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    for field, c in containers(pod_spec):
        where = f"{field} {c.get('name')}"
        given = [a for a in c.get("args") or [] if isinstance(a, str)]
        given += [e.get("value") for e in c.get("env") or [] if isinstance(e.get("value"), str)]
        for path in (p for p in given if p.startswith("/") and "\n" not in p):
            reason = resolve(path, pod_spec, index, templates)
            if reason:
                problem(obj, f"{where}: {path} {reason}")
        # Paths inside TOML files this container mounts from ConfigMaps must be reachable in
        # the pod (a config may be read by another container of the pod after a copy). When
        # the container is given some of those files by path, only those count.
        for m in c.get("volumeMounts") or []:
            v = volumes.get(m.get("name")) or {}
            cm = (v.get("configMap") or {}).get("name")
            mount = posixpath.normpath(m.get("mountPath", ""))
            named = {posixpath.relpath(p, mount) for p in given
                     if p.startswith(mount.rstrip("/") + "/")}
            for key, doc in parsed_toml.get(cm, {}).items():
                if named and key not in named:
                    continue
                for path in toml_paths(doc):
                    reason = resolve(path, pod_spec, index, templates)
                    if reason:
                        problem(obj, f"{where}: {path} (in {cm} {key}) {reason}")


def check_configs(objs):
    parsed = {}
    for obj in objs:
        doc = obj["_doc"]
        if doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            try:
                if key.endswith(".toml"):
                    parsed.setdefault(name_of(obj), {})[key] = tomllib.loads(text)
                elif key.endswith(".json"):
                    json.loads(text)
            except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
                problem(obj, f"{key} does not parse: {e}")
    return parsed


def check_secrets(objs):
    for obj in objs:
        doc = obj["_doc"]
        if doc.get("kind") != "Secret":
            continue
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        if annotations.get(PLACEHOLDER_ANNOTATION) != "true":
            problem(obj, f"a Secret in the repository must be annotated "
                         f"{PLACEHOLDER_ANNOTATION}: \"true\"")
        if doc.get("data") or doc.get("binaryData"):
            problem(obj, "a Secret in the repository must hold placeholders in stringData only "
                         "(never key material)")
        for key, value in (doc.get("stringData") or {}).items():
            if value != PLACEHOLDER:
                problem(obj, f"stringData.{key} must be the placeholder {PLACEHOLDER}")


def check_selectors(objs, workloads):
    pods = []  # (obj, labels, ports by name and number)
    for obj, pod in workloads:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        names, numbers = set(), set()
        for _, c in containers(pod.get("spec") or {}):
            for p in c.get("ports") or []:
                if p.get("name"):
                    names.add(p["name"])
                numbers.add(p.get("containerPort"))
        pods.append((obj, labels, names, numbers))
        sel = (obj["_doc"].get("spec") or {}).get("selector")
        if obj["_doc"]["kind"] != "Job" and sel is not None and not selects(sel, labels):
            problem(obj, "spec.selector does not select the pod template's labels")

    def matching(selector):
        return [p for p in pods if selects(selector or {}, p[1])]

    services = {}
    for obj in objs:
        doc = obj["_doc"]
        kind = doc.get("kind")
        spec = doc.get("spec") or {}
        if kind == "Service":
            services[name_of(obj)] = spec
            sel = spec.get("selector")
            if not sel:
                continue
            targets = matching({"matchLabels": sel})
            if not targets:
                problem(obj, "selector matches no pod template")
            for port in spec.get("ports") or []:
                tp = port.get("targetPort", port.get("port"))
                for t in targets:
                    if (isinstance(tp, str) and tp not in t[2]) or \
                            (isinstance(tp, int) and tp not in t[3]):
                        problem(obj, f"targetPort {tp} is not a port of {name_of(t[0])}")
        elif kind == "PodDisruptionBudget":
            if not matching(spec.get("selector")):
                problem(obj, "selector matches no pod template")
        elif kind == "NetworkPolicy":
            sel = spec.get("podSelector") or {}
            targets = matching(sel)
            if not targets:
                problem(obj, "podSelector matches no pod template")
            for direction, peers_field in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(direction) or []:
                    for peer in rule.get(peers_field) or []:
                        ps = peer.get("podSelector")
                        if ps and not peer.get("namespaceSelector") and not matching(ps):
                            problem(obj, f"{direction} peer {ps} matches no pod template")
                    if direction != "ingress":
                        continue
                    for port in rule.get("ports") or []:
                        p = port.get("port")
                        for t in targets:
                            if (isinstance(p, int) and p not in t[3]) or \
                                    (isinstance(p, str) and p not in t[2]):
                                problem(obj, f"ingress port {p} is not a port of "
                                             f"{name_of(t[0])}")
    for obj, _ in workloads:
        doc = obj["_doc"]
        if doc["kind"] != "StatefulSet":
            continue
        svc = services.get((doc.get("spec") or {}).get("serviceName"))
        if svc is None:
            problem(obj, "serviceName names no Service in the repository")
        elif svc.get("clusterIP") != "None":
            problem(obj, "serviceName must name a headless Service (clusterIP: None)")
    return services


def check_ledger(objs, workloads, services, parsed_toml, index):
    for obj, pod in workloads:
        doc = obj["_doc"]
        if doc["kind"] != "StatefulSet" or \
                ((pod.get("metadata") or {}).get("labels") or {}).get(
                    "app.kubernetes.io/component") != "ledger":
            continue
        replicas = (doc.get("spec") or {}).get("replicas")
        sts, svc = name_of(obj), (doc.get("spec") or {}).get("serviceName")
        spec = pod.get("spec") or {}
        config_maps = {(v.get("configMap") or {}).get("name") for v in spec.get("volumes") or []}
        peer_cm = [cm for cm in config_maps if cm in parsed_toml]
        if len(peer_cm) != 1:
            problem(obj, "expects one ConfigMap of peer configs (peerN.toml) among its volumes")
            continue
        configs = parsed_toml[peer_cm[0]]
        ids = sorted(c.get("id") for c in configs.values())
        if ids != list(range(replicas or 0)):
            problem(obj, f"{replicas} replicas but peer configs with ids {ids} in {peer_cm[0]}")
        for key, c in configs.items():
            if key != f"peer{c.get('id')}.toml":
                problem(obj, f"{peer_cm[0]} {key} has id {c.get('id')}")
        # Peers with different windows or batch limits disagree on which sequence numbers
        # are valid, so a quorum may never form.
        consensus = {json.dumps(c.get("consensus"), sort_keys=True) for c in configs.values()}
        if len(consensus) > 1:
            problem(obj, f"{peer_cm[0]}: the peers' [consensus] parameters differ")
        ports = {p.get("containerPort") for _, ct in containers(spec) for p in ct.get("ports") or []}
        listen_ports = {"listen": set(), "client_listen": set()}
        for key, c in configs.items():
            for field in listen_ports:
                if field not in c:
                    problem(obj, f"{peer_cm[0]} {key} has no {field}")
                    continue
                port = int(str(c.get(field)).rsplit(":", 1)[1])
                listen_ports[field].add(port)
                if port not in ports:
                    problem(obj, f"{peer_cm[0]} {key} {field} port {port} is not a container port")
        if listen_ports["listen"] & listen_ports["client_listen"]:
            problem(obj, f"{peer_cm[0]}: the peer and client listeners share a port")
        check_ledger_policy(objs, pod, listen_ports["listen"], listen_ports["client_listen"])
        genesis = index.get(("ConfigMap", "emrflow-ledger-genesis"))
        if genesis is None:
            problem(obj, "no genesis ConfigMap emrflow-ledger-genesis in the repository")
            continue
        g = json.loads((genesis["_doc"].get("data") or {}).get("genesis.json", "{}"))
        peers = g.get("peers") or []
        if len(peers) != replicas:
            problem(genesis, f"lists {len(peers)} peers; the StatefulSet {sts} runs {replicas}")
        svc_ports = {p.get("port") for p in (services.get(svc) or {}).get("ports") or []}
        for i, p in enumerate(peers):
            for field, want in (("address", listen_ports["listen"]),
                                ("client_address", listen_ports["client_listen"])):
                host, _, port = str(p.get(field)).rpartition(":")
                if host != f"{sts}-{i}.{svc}" or int(port or 0) not in svc_ports \
                        or int(port or 0) not in want:
                    problem(genesis, f"peer {i} {field} {p.get(field)} is not "
                                     f"{sts}-{i}.{svc}:<the {field} port of Service {svc}>")


def check_ledger_policy(objs, pod, peer_ports, client_ports):
    """The peer listener must be reachable from ledger peers only, and the client listener
    must be reachable at all (from labelled clients): a NetworkPolicy selecting the ledger pods
    allows ingress per port, and no rule lets a non-peer source reach a peer port."""
    labels = ((pod.get("metadata") or {}).get("labels") or {})
    policies = [o for o in objs if o["_doc"].get("kind") == "NetworkPolicy"
                and all(labels.get(k) == v for k, v in
                        (((o["_doc"].get("spec") or {}).get("podSelector") or {})
                         .get("matchLabels") or {}).items())]
    reachable = set()
    for o in policies:
        for rule in (o["_doc"].get("spec") or {}).get("ingress") or []:
            rule_ports = {p.get("port") for p in rule.get("ports") or []}
            sources = rule.get("from") or []
            if not rule_ports:
                rule_ports = peer_ports | client_ports
            reachable |= rule_ports
            if not (rule_ports & peer_ports):
                continue
            for src in sources or [{}]:
                sel = (src.get("podSelector") or {}).get("matchLabels") or {}
                if set(src) != {"podSelector"} or \
                        sel.get("app.kubernetes.io/component") != "ledger":
                    problem(o, f"ingress to the ledger peer port {sorted(peer_ports)} from "
                               f"{src or 'anywhere'}: only ledger peers may reach it")
    for port in sorted((peer_ports | client_ports) - reachable):
        problem(policies[0] if policies else objs[0],
                f"no NetworkPolicy admits ingress to ledger port {port}")


def main(paths):
    objs = load(paths)
    index = {(o["_doc"].get("kind"), name_of(o)): o for o in objs}
    claims = {name_of(o) for o in objs if o["_doc"].get("kind") == "PersistentVolumeClaim"}
    parsed_toml = check_configs(objs)
    check_secrets(objs)
    workloads = []
    for obj in objs:
        if obj["_doc"].get("kind") not in WORKLOAD_KINDS:
            continue
        pod = pod_template(obj["_doc"])
        spec = pod.get("spec") or {}
        workloads.append((obj, pod))
        check_posture(obj, spec)
        check_references(obj, spec, index, claims)
        check_paths(obj, spec, index, parsed_toml)
    services = check_selectors(objs, workloads)
    check_ledger(objs, workloads, services, parsed_toml, index)
    for p in problems:
        print(f"FAIL {p}")
    print(f"checked {len(objs)} objects ({len(workloads)} workloads) in {len(paths)} files: "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
