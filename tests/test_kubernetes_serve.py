"""``katyusha serve --discovery kubernetes`` end to end, on loopback.

Real processes over real sockets: katyusha replicas (``katyusha serve``
with a kubeconfig naming the emulator), app pods (sim-backend behind nonna),
and kmock's KubernetesEmulator, a third party's, as the API server. Each app
pod is published as Kubernetes would publish it, an endpoint of the Service's
EndpointSlices; every pod here listens on 127.0.0.1 on a port of its own, so
each gets a slice of its own (as Kubernetes does when a named port's number
differs between pods). The test changes the slices through the emulator's
API, so every replica hears of it through its own watch.
"""

import asyncio
import contextlib

import aiohttp
import kmock

from tests.katyusha_fleet import Pod, start_pods
from tests.procs import Proc, script
from tests.test_kubernetes_emulator import SLICES, Emulator, until, write_kubeconfig

NS = "demo"
SLICES_URL = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
DISCOVERY = ("--discovery", "kubernetes", "--kubernetes-namespace", NS, "--kubernetes-service", "hello",
             "--kubernetes-port", "http", "--kubernetes-admin-port", "nonna-admin")  # fmt: skip
GONE = {
    "type": "ERROR",
    "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410},
}  # fmt: skip


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def pod_slice(pod: Pod, node: str, **options) -> dict:
    """The EndpointSlice Kubernetes would publish for ``pod`` (its nonna's data and admin ports)."""
    return endpoint_slice(pod.name, _port(pod.nonna.url), _port(pod.nonna.admin), node, **options)


def endpoint_slice(name: str, port: int, admin_port: int, node: str, *, service: str = "hello",
                   ready: bool = True, terminating: bool = False) -> dict:
    """A slice of ``service`` holding one pod ``name`` on 127.0.0.1 (ports ``http`` and ``nonna-admin``)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{name}", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "nodeName": node,
                       "conditions": {"ready": ready, "serving": True, "terminating": terminating},
                       "targetRef": {"kind": "Pod", "namespace": NS, "name": name}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                  {"name": "nonna-admin", "port": admin_port, "protocol": "TCP"}],
    }  # fmt: skip


@contextlib.asynccontextmanager
async def api_server():
    async with Emulator() as cluster, kmock.Server(cluster) as server:
        for resource in (SLICES, "v1/services"):
            cluster.resources[resource] = {}
        cluster.server_url = str(server.url).rstrip("/")
        yield cluster


def start_katyusha(*args: str, env: dict | None = None) -> Proc:
    return Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0", *args], ready_timeout=30, env=env)


async def pod_names(session: aiohttp.ClientSession, replica: Proc) -> dict[str, str]:
    """The pods in a replica's load table: name -> node."""
    async with session.get(replica.admin + "/pods") as response:
        document = await response.json()
    return {row["name"]: row["node"] for row in document["pods"]}


class Load:
    """Requests sent without pause through each replica; every answer kept as (status, pod that answered)."""

    def __init__(self, session: aiohttp.ClientSession, replicas: list[Proc], workers: int = 3):
        self.session = session
        self.answers: dict[str, list[tuple[int, str | None]]] = {r.url: [] for r in replicas}
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self._worker(r.url)) for r in replicas for _ in range(workers)]

    async def _worker(self, url: str) -> None:
        while not self.stop.is_set():
            try:
                # POST: not idempotent, so katyusha never retries it elsewhere; a request sent to a
                # pod that is gone fails, and shows.
                async with self.session.post(url + "/work", data=b"x" * 64,
                                             timeout=aiohttp.ClientTimeout(total=20)) as response:
                    await response.read()
                    self.answers[url].append((response.status, response.headers.get("Nonna-Pod")))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers[url].append((0, repr(exc)))

    def served_by(self, url: str, pod: str) -> int:
        return sum(1 for _, answered in self.answers[url] if answered == pod)

    def failures(self) -> list[tuple[str, int, str | None]]:
        return [(url, status, pod) for url, rows in self.answers.items() for status, pod in rows if status != 200]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def test_two_replicas_follow_the_same_pods_drain_without_failures_and_relist_on_410(tmp_path):
    pods = await asyncio.to_thread(start_pods, [1.0] * 4, "exp:10ms")
    replicas: list[Proc] = []
    try:
        async with api_server() as cluster, aiohttp.ClientSession() as session:
            try:
                for pod, node in zip(pods[:2], ("node-a", "node-b"), strict=True):  # pods 2 and 3 come later
                    await cluster.post(SLICES_URL, json=pod_slice(pod, node))
                for token in ("replica-a", "replica-b"):
                    kubeconfig = write_kubeconfig(tmp_path / token, cluster.server_url, token)
                    replicas.append(await asyncio.to_thread(
                        start_katyusha, *DISCOVERY, "--kubeconfig", str(kubeconfig), "--keep-nonna-headers", "true"
                    ))  # fmt: skip

                async def every_replica_has(*names: str) -> None:
                    async def check():
                        return all([set(await pod_names(session, r)) == set(names) for r in replicas])

                    deadline = asyncio.get_running_loop().time() + 10
                    while not await check():
                        assert asyncio.get_running_loop().time() < deadline, f"replicas never had only {names}"
                        await asyncio.sleep(0.05)

                # Both replicas discover the ready pods, with their nodes, from the slices.
                await every_replica_has("pod-0", "pod-1")
                for replica in replicas:
                    assert await pod_names(session, replica) == {"pod-0": "node-a", "pod-1": "node-b"}
                load = Load(session, replicas)
                try:
                    # A pod added to the Service appears in both and serves through both.
                    await cluster.post(SLICES_URL, json=pod_slice(pods[2], "node-c"))
                    await every_replica_has("pod-0", "pod-1", "pod-2")
                    await until(lambda: all(load.served_by(r.url, "pod-2") for r in replicas), timeout=10,
                                what="pod-2 to serve through both replicas")  # fmt: skip

                    # pod-0 turns terminating: both drain it; then it stops, and its slice goes.
                    await until(lambda: all(load.served_by(r.url, "pod-0") for r in replicas), timeout=10,
                                what="pod-0 to serve through both replicas")  # fmt: skip
                    terminating = pod_slice(pods[0], "node-a", ready=False, terminating=True)
                    await cluster.patch(f"{SLICES_URL}/hello-pod-0", json={"endpoints": terminating["endpoints"]})
                    await every_replica_has("pod-1", "pod-2")
                    await asyncio.sleep(0.5)  # the pod's preStop: what was in flight to it finishes
                    served = {r.url: load.served_by(r.url, "pod-0") for r in replicas}
                    await asyncio.to_thread(pods[0].stop)
                    await cluster.delete(f"{SLICES_URL}/hello-pod-0")

                    # The 410 path: each replica's next watch is told its version is gone, and meanwhile
                    # pod-2's slice vanished with no event; only the list that follows a 410 can show that.
                    for token in ("replica-a", "replica-b"):
                        watch = cluster[kmock.action.WATCH, kmock.resource(SLICES),
                                        kmock.headers({"Authorization": f"Bearer {token}"})]  # fmt: skip
                        watch << iter([b"", GONE, StopIteration])
                    cluster.objects[SLICES, NS, "hello-pod-2"].delete()
                    lists_before = len([r for r in cluster if r.action == kmock.action.LIST])
                    assert cluster.drop_watches() >= 2
                    await every_replica_has("pod-1")
                    assert len([r for r in cluster if r.action == kmock.action.LIST]) == lists_before + 2
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(pods[2].stop)

                    # After the re-list the watches work again: a new pod appears in both and serves.
                    await cluster.post(SLICES_URL, json=pod_slice(pods[3], "node-a"))
                    await every_replica_has("pod-1", "pod-3")
                    await until(lambda: all(load.served_by(r.url, "pod-3") for r in replicas), timeout=10,
                                what="pod-3 to serve through both replicas")  # fmt: skip
                finally:
                    await load.finish()
                assert load.failures() == [], load.failures()[:5]
                assert {r.url: load.served_by(r.url, "pod-0") for r in replicas} == served
                assert all(len(rows) > 50 for rows in load.answers.values()), {u: len(a) for u, a in load.answers.items()}
            finally:
                for replica in replicas:
                    assert await asyncio.to_thread(replica.terminate) == 0, replica.output
    finally:
        for replica in replicas:
            replica.kill()
        for pod in pods:
            await asyncio.to_thread(pod.stop)


def replica_slice(ready: dict[str, bool]) -> dict:
    """katyusha's own admin Service: one endpoint per replica, by pod name."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "katyusha-admin-x1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "katyusha-admin"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": up},
                       "targetRef": {"kind": "Pod", "namespace": NS, "name": name}}
                      for i, (name, up) in enumerate(ready.items())],
        "ports": [{"name": "admin", "port": 8081, "protocol": "TCP"}],
    }  # fmt: skip


async def test_replicas_subset_the_pods_and_every_worker_process_follows_on_its_own(tmp_path):
    replicas: list[Proc] = []
    async with api_server() as cluster, aiohttp.ClientSession() as session:
        try:
            cluster.objects["v1/services", NS, "hello"] = {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "hello", "namespace": NS,
                             "annotations": {"katyusha.dev/container-concurrency": "1"}},
            }  # fmt: skip
            pods = [f"hello-{i}" for i in range(6)]
            for i, name in enumerate(pods):  # nothing is sent to them: this test looks at the pod sets
                await cluster.post(SLICES_URL, json=endpoint_slice(name, 20000 + 2 * i, 20001 + 2 * i, "node-a"))
            await cluster.post(SLICES_URL, json=replica_slice({"katyusha-a": True, "katyusha-b": True}))
            subset = ("--kubernetes-subset", "true", "--kubernetes-peers", "katyusha-admin")
            for me, threads in (("katyusha-a", "2"), ("katyusha-b", "1")):
                kubeconfig = write_kubeconfig(tmp_path / me, cluster.server_url, me)
                replicas.append(await asyncio.to_thread(
                    start_katyusha, *DISCOVERY, *subset, "--kubeconfig", str(kubeconfig),
                    "--katyusha-threads", threads, env={"POD_NAME": me},
                ))  # fmt: skip
            a, b = replicas

            async def tables(replica: Proc) -> list[set[str]]:
                """Each worker's pod names (one entry for a single process)."""
                async with session.get(replica.admin + "/pods") as response:
                    document = await response.json()
                rows = [w["pods"] for w in document["workers"]] if "workers" in document else [document["pods"]]
                return [{row["name"] for row in pods} for pods in rows]

            async def settled(predicate, what):
                deadline = asyncio.get_running_loop().time() + 10
                while True:
                    seen = [await tables(a), await tables(b)]
                    if predicate(*seen):
                        return seen
                    assert asyncio.get_running_loop().time() < deadline, f"{what}: {seen}"
                    await asyncio.sleep(0.05)

            # Each replica takes half of the pods, none twice; both of a's workers take the same half.
            def split(mine, theirs):
                return (len(mine) == 2 and mine[0] == mine[1] and len(mine[0]) == 3 and len(theirs[0]) == 3
                        and mine[0] | theirs[0] == set(pods))  # fmt: skip

            (mine, theirs) = await settled(split, "an even split")
            assert not mine[0] & theirs[0]
            # Each of a's two workers lists and watches on its own: two lists per Service.
            lists = [r for r in cluster if r.action == kmock.action.LIST and r.headers["Authorization"] == "Bearer katyusha-a"]
            assert len(lists) == 4, [r.url for r in lists]

            # b stops being ready (it is stopping, or failing its probe): a takes every pod, in both workers.
            await cluster.patch(f"{SLICES_URL}/katyusha-admin-x1",
                                json={"endpoints": replica_slice({"katyusha-a": True, "katyusha-b": False})["endpoints"]})
            await settled(lambda mine, _: mine == [set(pods), set(pods)], "a to take every pod")
        finally:
            for replica in replicas:
                assert await asyncio.to_thread(replica.terminate) == 0, replica.output
