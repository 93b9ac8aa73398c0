"""katyusha.kubernetes against a Kubernetes API emulator (kmock's KubernetesEmulator, a third party's).

Real EndpointSlice documents (tests/k8s_data) go in and out through the
emulator's HTTP API; the client under test is kubernetes_asyncio, as in
production. What the emulator does not do (resourceVersion checks, label
selectors, bookmarks, 410) is scripted with kmock's own reactions where a
test needs it, and said where it matters.
"""

import asyncio
import json
import pathlib
import ssl

import aiohttp.test_utils
import kmock
import pytest
import trustme
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration

from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.backoff import Backoff
from katyusha.kubernetes.connect import api_client
from katyusha.kubernetes.discovery import EndpointSliceWatcher, KubernetesDiscovery, ServiceRef
from katyusha.kubernetes.leader import LeaderElector
from katyusha.kubernetes.scale import DeploymentRef, DeploymentScaler, KubernetesActuator
from katyusha.kubernetes.settings import read_kpa_config

DATA = pathlib.Path(__file__).parent / "k8s_data"
SLICES = "discovery.k8s.io/v1/endpointslices"
SLICES_URL = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
FAST = {"watch_timeout": 30, "read_timeout": 10.0}


def slice_doc(name: str) -> dict:
    return json.loads((DATA / f"endpointslice-{name}.json").read_text())


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, reading ``watch=True`` as the API server does, and keeping watch requests to drop.

    The API server takes any value but ``0``/``false`` as true; kmock only
    lowercase ``true``, while kubernetes_asyncio sends ``True``.
    """

    async def __call__(self, raw):
        if raw.query.get("watch") == "True":
            raw = raw.clone(rel_url=raw.rel_url.update_query(watch="true"))
            self.__dict__.setdefault("watch_requests", []).append(raw)
        return await super().__call__(raw)

    def drop_watches(self) -> int:
        """Reset the TCP connection of every watch so far (a dropped connection, as a restarting server's)."""
        dropped = 0
        for raw in self.__dict__.get("watch_requests", []):
            if raw.transport is not None and not raw.transport.is_closing():
                raw.transport.abort()
                dropped += 1
        return dropped


@pytest.fixture
async def cluster():
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources[SLICES] = {}
        emulator.resources["coordination.k8s.io/v1/leases"] = {}
        emulator.resources["apps/v1/deployments"] = {}
        emulator.resources["v1/services"] = {}
        emulator.server_url = str(server.url).rstrip("/")
        yield emulator


@pytest.fixture
async def api(cluster):
    async with ApiClient(Configuration(host=cluster.server_url)) as client:
        yield client


def write_kubeconfig(path, server_url, token="t", namespace=None):
    """A kubeconfig file at ``path`` naming the emulator at ``server_url`` with a bearer ``token``; returns its path."""
    context = {"cluster": "emulator", "user": "dev", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
        "users": [{"name": "dev", "user": {"token": token}}],
        "contexts": [{"name": "emulator", "context": context}],
    }))  # fmt: skip
    return path


async def until(predicate, timeout=5.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Follow:
    """Runs a watcher and keeps every pod set it reported."""

    def __init__(self, api, service="demo/hello:http", **options):
        self.sets = []
        self.watcher = EndpointSliceWatcher(
            api, ServiceRef.parse(service), self.sets.append, backoff=Backoff(0.05, 0.2), **{**FAST, **options}
        )

    async def __aenter__(self):
        self.task = asyncio.create_task(self.watcher.run())
        await asyncio.wait_for(self.watcher.synced.wait(), 5)
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def last(self):
        return self.sets[-1]

    async def ready(self, *names, draining=None):
        want = tuple(sorted(names))

        def matches():
            if not self.sets or self.last.ready_names() != want:
                return False
            return draining is None or tuple(p.name for p in self.last.draining) == tuple(draining)

        await until(matches, what=f"ready {want} draining {draining}")


async def test_discovery_follows_add_ready_terminating_delete(cluster, api):
    cluster.objects[SLICES, "demo", "hello-9m4tz"] = slice_doc("hello-9m4tz")
    cluster.objects[SLICES, "demo", "other-k2j9d"] = slice_doc("other-k2j9d")  # another Service's
    async with Follow(api) as follow:
        # Listed: klmno is starting (not ready), pqrst terminating (to drain); other's pod is not ours.
        await follow.ready(draining=["hello-5f8b9c6d7-pqrst"])
        # Added: a new slice with two ready pods.
        await cluster.post(SLICES_URL, json=slice_doc("hello-7x2kq"))
        await follow.ready("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij")
        assert follow.last.ready[0].node == "node-a" and follow.last.ready[1].url == "http://10.244.2.9:8012"
        # Ready: klmno passes its readiness probe.
        starting = slice_doc("hello-9m4tz")
        starting["endpoints"][0]["conditions"] = {"ready": True, "serving": True, "terminating": False}
        await cluster.patch(f"{SLICES_URL}/hello-9m4tz", json={"endpoints": starting["endpoints"]})
        await follow.ready("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij", "hello-5f8b9c6d7-klmno")
        # Terminating: abcde is being deleted; it drains.
        doc = slice_doc("hello-7x2kq")
        doc["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
        await cluster.patch(f"{SLICES_URL}/hello-7x2kq", json={"endpoints": doc["endpoints"]})
        await follow.ready(
            "hello-5f8b9c6d7-fghij", "hello-5f8b9c6d7-klmno",
            draining=["hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-pqrst"],
        )  # fmt: skip
        # Deleted: the slice goes, and its pods with it.
        await cluster.delete(f"{SLICES_URL}/hello-9m4tz")
        await follow.ready("hello-5f8b9c6d7-fghij", draining=["hello-5f8b9c6d7-abcde"])
        counts = follow.watcher.counts
        assert counts["lists"] == 1 and counts["errors"] == 0
    # The client asked for what the API server needs to filter and resume.
    watches = [r for r in cluster if r.params.get("watch") == "true"]
    assert watches and all(r.params["labelSelector"] == "kubernetes.io/service-name=hello" for r in watches)
    assert all(r.params["allowWatchBookmarks"] == "True" and "resourceVersion" in r.params for r in watches)


async def test_410_gone_forces_a_relist(cluster, api):
    cluster.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")
    cluster.objects[SLICES, "demo", "hello-9m4tz"] = slice_doc("hello-9m4tz")
    gone = {
        "type": "ERROR",
        "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "too old resource version: 48236 (48950)", "reason": "Expired", "code": 410},
    }  # fmt: skip

    def slice_deleted_meanwhile():
        # Deleted while no watch was open: no DELETED event will ever tell; only a new list shows it.
        cluster.objects[SLICES, "demo", "hello-9m4tz"].delete()

    # The first watch answers 410 (once: a depletable stream), after the slice vanished.
    cluster[kmock.action.WATCH, kmock.resource(SLICES)] << iter([b"", slice_deleted_meanwhile, gone, StopIteration])
    async with Follow(api) as follow:
        await follow.ready("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij", draining=[])
        counts = follow.watcher.counts
        assert counts["gone"] == 1 and counts["lists"] == 2
    lists = [r for r in cluster if r.action == kmock.action.LIST]
    assert len(lists) == 2


async def test_dropped_connection_reconnects_with_backoff(cluster, api):
    cluster.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")
    async with Follow(api) as follow:
        await follow.ready("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij")
        await until(lambda: cluster.__dict__.get("watch_requests"), what="a watch")
        assert cluster.drop_watches() == 1
        await until(lambda: follow.watcher.counts["errors"] >= 1, what="the drop to be seen")
        await until(lambda: follow.watcher.counts["watches"] >= 2, what="a new watch")
        # Changes after the drop arrive through the new watch, without a new list.
        doc = slice_doc("hello-7x2kq")
        doc["endpoints"][1]["conditions"] = {"ready": False, "serving": False, "terminating": True}
        await cluster.patch(f"{SLICES_URL}/hello-7x2kq", json={"endpoints": doc["endpoints"]})
        await follow.ready("hello-5f8b9c6d7-abcde", draining=["hello-5f8b9c6d7-fghij"])
        assert follow.watcher.counts["lists"] == 1


async def test_unreachable_api_server_backs_off_then_lists(unused_tcp_port):
    config = Configuration(host=f"http://127.0.0.1:{unused_tcp_port}")
    async with ApiClient(config) as client, Emulator() as emulator:
        emulator.resources[SLICES] = {}
        emulator.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")
        sets = []
        watcher = EndpointSliceWatcher(client, ServiceRef.parse("demo/hello:http"), sets.append,
                                       backoff=Backoff(0.05, 0.2), **FAST)  # fmt: skip
        task = asyncio.create_task(watcher.run())
        try:
            await until(lambda: watcher.counts["errors"] >= 3, what="three refused connections")
            assert sets == []
            async with kmock.Server(emulator, port=unused_tcp_port):
                await asyncio.wait_for(watcher.synced.wait(), 5)
                assert sets[-1].ready_names() == ("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            task.cancel()


async def test_concurrency_from_the_service_annotation_and_subsets_between_replicas(cluster, api):
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "hello", "namespace": "demo",
                            "annotations": {"katyusha.dev/container-concurrency": "2"}}}  # fmt: skip
    cluster.objects["v1/services", "demo", "hello"] = service
    cluster.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")
    peers = slice_doc("other-k2j9d")  # katyusha's own Service: two replicas
    peers["metadata"].update(name="katyusha-admin-x1", labels={"kubernetes.io/service-name": "katyusha-admin"})
    peers["endpoints"] = [
        {"addresses": [f"10.244.9.{i}"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": name}}
        for i, name in enumerate(["katyusha-a", "katyusha-b"])
    ]
    cluster.objects[SLICES, "demo", "katyusha-admin-x1"] = peers
    seen = {"katyusha-a": {}, "katyusha-b": {}}
    runs = []
    for me in seen:
        discovery = KubernetesDiscovery(
            api, [ServiceRef.parse("demo/hello:http")],
            lambda key, eps, me=me: seen[me].__setitem__(key, eps),
            peers=ServiceRef.parse("demo/katyusha-admin:http"), me=me, backoff=Backoff(0.05, 0.2), **FAST,
        )  # fmt: skip
        runs.append(asyncio.create_task(discovery.run()))
    try:
        def split():
            sets = [seen[me].get("demo/hello") for me in seen]
            return all(s is not None and len(s.ready) == 1 for s in sets)

        await until(split, what="each replica to take one pod")
        a, b = (seen[me]["demo/hello"] for me in seen)
        assert sorted(a.ready_names() + b.ready_names()) == ["hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij"]
        assert a.ready[0].concurrency == 2
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def test_scale_subresource_read_and_patch_and_the_actuator(cluster, api):
    cluster.objects["apps/v1/deployments", "demo", "hello"] = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello", "namespace": "demo"},
        "spec": {"replicas": 1}, "status": {"replicas": 1},
    }  # fmt: skip
    scaler = DeploymentScaler(api, DeploymentRef.parse("demo/hello"))
    assert (await scaler.read()).replicas == 1
    assert (await scaler.patch(3)).replicas == 3
    patches = [r for r in cluster if r.method == "PATCH"]
    assert patches[-1].url.path == "/apis/apps/v1/namespaces/demo/deployments/hello/scale"
    assert patches[-1].data == {"spec": {"replicas": 3}}
    actuator = KubernetesActuator(api, {"hello": DeploymentRef.parse("demo/hello")})
    assert actuator.current("hello") == 0  # not read yet
    await actuator.refresh()
    assert actuator.current("hello") == 3
    await actuator.scale_to("hello", 3)  # no change: no call
    assert len([r for r in cluster if r.method == "PATCH"]) == 1
    await actuator.scale_to("hello", 0)
    assert actuator.current("hello") == 0
    assert cluster.objects["apps/v1/deployments", "demo", "hello"]["spec"]["replicas"] == 0
    # Gated by a Lease that lapsed: no call, the count stays.
    leading = False
    gated = KubernetesActuator(api, {None: DeploymentRef.parse("demo/hello")}, gate=lambda: leading)
    await gated.refresh()
    await gated.scale_to(None, 4)
    assert gated.current(None) == 0 and gated.refused == 1 and len([r for r in cluster if r.method == "PATCH"]) == 2
    leading = True
    await gated.scale_to(None, 4)
    assert cluster.objects["apps/v1/deployments", "demo", "hello"]["spec"]["replicas"] == 4


async def test_kpa_settings_read_from_the_cluster(cluster, api):
    cluster.objects["v1/services", "demo", "hello"] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "demo", "annotations": {"autoscaling.knative.dev/target": "10"}},
    }  # fmt: skip
    cluster.objects["apps/v1/deployments", "demo", "hello"] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "demo", "annotations": {
            "autoscaling.knative.dev/max-scale": "5", "katyusha.dev/container-concurrency": "3"}},
    }  # fmt: skip
    config = await read_kpa_config(api, KPAConfig(), DeploymentRef.parse("demo/hello"), "hello")
    assert (config.target, config.max_scale, config.container_concurrency) == (10.0, 5, 3)
    missing = await read_kpa_config(api, KPAConfig(), DeploymentRef.parse("demo/absent"), "absent")
    assert missing == KPAConfig()


async def test_lease_handover_between_two_electors(cluster, api):
    timings = {"lease_duration": 1.2, "renew_deadline": 0.8, "retry_period": 0.1}
    a = LeaderElector(api, "katyusha", "katyusha-control", "control-a", **timings)
    b = LeaderElector(api, "katyusha", "katyusha-control", "control-b", **timings)
    lease = ("coordination.k8s.io/v1/leases", "katyusha", "katyusha-control")
    task_a = asyncio.create_task(a.run())
    await asyncio.wait_for(a.leading.wait(), 5)
    task_b = asyncio.create_task(b.run())
    try:
        await asyncio.sleep(0.6)  # b reads a's renewals and follows
        assert a.is_leader() and not b.is_leader() and b.counts["rounds"] >= 3
        assert cluster.objects[lease]["spec"]["holderIdentity"] == "control-a"
        # a dies without releasing (its task stops, the lease is left as it was): b waits out the duration.
        task_a.cancel()
        a.release = _no_release
        await asyncio.gather(task_a, return_exceptions=True)
        loop = asyncio.get_running_loop()
        lost = loop.time()
        await asyncio.wait_for(b.leading.wait(), 5)
        assert loop.time() - lost >= 1.0  # not before the lease expired
        spec = cluster.objects[lease]["spec"]
        assert spec["holderIdentity"] == "control-b" and spec["leaseTransitions"] == 1
        # b stops cleanly: it releases, and a new candidate takes over at once.
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)
        assert cluster.objects[lease]["spec"]["holderIdentity"] == ""
        c = LeaderElector(api, "katyusha", "katyusha-control", "control-c", **timings)
        started = loop.time()
        assert await c.round()
        assert loop.time() - started < 0.5
    finally:
        for task in (task_a, task_b):
            task.cancel()


async def _no_release():
    return None


async def test_kubeconfig_path_connects(cluster, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.server_url, "kubeconfig-token", "demo")
    cluster.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")
    client = await api_client(str(kubeconfig), environ={})
    try:
        async with Follow(client) as follow:
            assert follow.last.ready_names() == ("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij")
    finally:
        await client.close()
    assert all(r.headers.get("Authorization") == "Bearer kubeconfig-token" for r in cluster)


async def test_in_cluster_service_account_over_tls(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)

    class TLSServer(aiohttp.test_utils.RawTestServer):
        async def start_server(self, **kwargs):
            return await super().start_server(ssl=server_ctx, **kwargs)

    token, ca_file = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("service-account-token")
    ca.cert_pem.write_to_path(str(ca_file))
    async with Emulator() as emulator, kmock.Server(emulator, server_cls=TLSServer) as server:
        emulator.resources["apps/v1/deployments"] = {}
        emulator.objects["apps/v1/deployments", "demo", "hello"] = {"spec": {"replicas": 2}, "status": {"replicas": 2}}
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.port)}
        client = await api_client(environ=env, token_file=str(token), ca_file=str(ca_file))
        try:
            assert client.configuration.host == f"https://127.0.0.1:{server.port}"
            assert (await DeploymentScaler(client, DeploymentRef.parse("demo/hello")).read()).replicas == 2
        finally:
            await client.close()
        assert [r.headers.get("Authorization") for r in emulator] == ["Bearer service-account-token"]
