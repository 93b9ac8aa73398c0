"""The Kubernetes control plane end to end: a real katyusha process, the control plane as its own process
(``python -m katyusha.kubernetes control``), and kmock's KubernetesEmulator as the API server.

katyusha's admin address is published as an EndpointSlice of its admin
Service, as Kubernetes would publish a katyusha pod; the control plane finds
it there, takes the Lease, and scales a Deployment from zero when a request
waits at katyusha.
"""

import asyncio
import contextlib
import sys

import aiohttp
import kmock
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Proc, script
from tests.test_kubernetes_emulator import SLICES, Emulator, slice_doc, until, write_kubeconfig

LEASE = ("coordination.k8s.io/v1/leases", "demo", "katyusha-control")


def deployment(name: str, annotations: dict | None = None) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "demo", "annotations": annotations or {}},
        "spec": {"replicas": 0}, "status": {"replicas": 0},
    }  # fmt: skip


@contextlib.asynccontextmanager
async def cluster_with(katyusha: Proc):
    """The emulator, holding katyusha's admin endpoint (pod katyusha-0) and one slice of the hello Service."""
    async with Emulator() as cluster, kmock.Server(cluster) as server:
        for resource in (SLICES, "coordination.k8s.io/v1/leases", "apps/v1/deployments", "v1/services"):
            cluster.resources[resource] = {}
        peers = slice_doc("other-k2j9d")
        peers["metadata"].update(name="katyusha-admin-4bx8w", labels={"kubernetes.io/service-name": "katyusha-admin"})
        peers["endpoints"][0].update(addresses=["127.0.0.1"], targetRef={"kind": "Pod", "name": "katyusha-0"})
        peers["ports"] = [{"name": "admin", "port": int(katyusha.admin.rsplit(":", 1)[1]), "protocol": "TCP"}]
        cluster.objects[SLICES, "demo", "katyusha-admin-4bx8w"] = peers
        cluster.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")
        cluster.server_url = str(server.url).rstrip("/")
        yield cluster


def start_control(tmp_path, cluster, identity: str, *scale: str) -> Proc:
    kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{identity}", cluster.server_url, identity)
    settings = tmp_path / "config-autoscaler.yaml"
    settings.write_text(yaml.safe_dump({"allow-zero-initial-scale": "true", "tick-interval": "0.5s"}))
    return Proc(
        [sys.executable, "-m", "katyusha.kubernetes", "control", "--kubeconfig", str(kubeconfig),
         "--namespace", "demo", "--identity", identity, "--katyusha", "katyusha-admin:admin",
         *(f"--scale={s}" for s in scale), "--config-autoscaler", str(settings),
         "--host", "127.0.0.1", "--admin-port", "0",
         "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5"],
    )  # fmt: skip


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def metric(session: aiohttp.ClientSession, proc: Proc, name: str, **labels: str) -> float | None:
    _, text = await get(session, proc.admin + "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def holder(cluster):
    try:
        return cluster.objects[LEASE]["spec"]["holderIdentity"]
    except KeyError:
        return None


def scale_patches(cluster, name: str):
    return [r for r in cluster if r.method == "PATCH" and r.url.path.endswith(f"/deployments/{name}/scale")]


async def test_control_plane_scales_a_deployment_from_zero_on_katyusha_demand(tmp_path):
    katyusha = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0", "--request-timeout", "20"])
    control = None
    try:
        async with cluster_with(katyusha) as cluster, aiohttp.ClientSession() as session:
            try:
                cluster.objects["apps/v1/deployments", "demo", "hello"] = deployment(
                    "hello", {"autoscaling.knative.dev/initial-scale": "0"})
                control = await asyncio.to_thread(start_control, tmp_path, cluster, "control-0", "default=hello:hello")
                assert await get(session, control.admin + "/healthz") == (200, "ok")
                await until(lambda: holder(cluster) == "control-0", timeout=15, what="the control plane to take the Lease")
                await asyncio.sleep(1.5)  # several ticks with no demand: nothing is scaled
                assert cluster.objects["apps/v1/deployments", "demo", "hello"]["spec"]["replicas"] == 0, control.output

                waiting = asyncio.create_task(session.get(katyusha.url + "/hello", timeout=aiohttp.ClientTimeout(30)))
                await until(lambda: cluster.objects["apps/v1/deployments", "demo", "hello"]["spec"]["replicas"] == 1,
                            timeout=10, what="a scale from zero")  # fmt: skip
                waiting.cancel()
                assert [p.data for p in scale_patches(cluster, "hello")] == [{"spec": {"replicas": 1}}]
                # The admin port tells it: leader, the decision, the watches it runs.
                assert await metric(session, control, "katyusha_control_leader", identity="control-0") == 1
                assert await metric(session, control, "katyusha_autoscaler_desired_pods", service="default") == 1
                async with session.get(control.admin + "/status") as response:
                    status = await response.json()
                assert status["leader"] and status["targets"]["default"]["replicas"] == 1
                assert status["watches"]["demo/katyusha-admin"]["lists"] >= 1

                assert await asyncio.to_thread(control.terminate) == 0  # the emulator must keep answering meanwhile
                output, control = control.output, None
                assert holder(cluster) == "", output  # released on SIGTERM
            except BaseException:
                if control is not None:
                    print(control.output)
                    control.kill()  # before the emulator stops: it waits for open watches to end
                raise
    finally:
        katyusha.terminate()


async def test_only_the_leader_scales_a_named_service_and_the_standby_takes_over(tmp_path):
    services = yaml.safe_dump([{"name": "shop", "path-prefix": "/shop"}, {"name": "hello", "path-prefix": "/"}])
    katyusha = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0", "--request-timeout", "20",
                     "--set", f"services={services}"])  # fmt: skip
    controls: list[Proc] = []
    try:
        async with cluster_with(katyusha) as cluster, aiohttp.ClientSession() as session:
            try:
                for name in ("shop", "hello"):
                    cluster.objects["apps/v1/deployments", "demo", name] = deployment(
                        name, {"autoscaling.knative.dev/initial-scale": "0"})
                for identity in ("control-a", "control-b"):
                    controls.append(await asyncio.to_thread(
                        start_control, tmp_path, cluster, identity, "shop=shop", "hello=hello:hello"))
                await until(lambda: holder(cluster) in ("control-a", "control-b"), timeout=15, what="a leader")
                by_identity = dict(zip(("control-a", "control-b"), controls, strict=True))
                leader = by_identity.pop(holder(cluster))
                (standby,) = by_identity.values()
                # Both copies are live and ready; only one says it leads.
                for proc, leading in ((leader, 1), (standby, 0)):
                    assert await get(session, proc.admin + "/healthz") == (200, "ok")
                    assert await metric(session, proc, "katyusha_control_leader") == leading

                # A request for shop waits at katyusha: shop's Deployment (only) goes from zero to one,
                # patched by the leader alone.
                waiting = asyncio.create_task(session.get(katyusha.url + "/shop/x", timeout=aiohttp.ClientTimeout(30)))
                await until(lambda: cluster.objects["apps/v1/deployments", "demo", "shop"]["spec"]["replicas"] == 1,
                            timeout=10, what="shop to scale from zero")  # fmt: skip
                await asyncio.sleep(1.0)
                patches = scale_patches(cluster, "shop")
                assert {p.headers["Authorization"] for p in patches} == {f"Bearer {holder(cluster)}"}
                assert scale_patches(cluster, "hello") == []

                # The leader stops (it releases the Lease): the standby takes over and runs the autoscaler.
                first = holder(cluster)
                assert await asyncio.to_thread(leader.terminate) == 0
                await until(lambda: holder(cluster) not in (first, "", None), timeout=10, what="the standby to lead")

                async def leads():
                    async with session.get(standby.admin + "/status") as response:
                        status = await response.json()
                    return status["leader"] and status["autoscaler"] and "shop" in status["autoscaler"]["services"]

                deadline = asyncio.get_running_loop().time() + 10
                while not await leads():
                    assert asyncio.get_running_loop().time() < deadline, standby.output
                    await asyncio.sleep(0.1)
                waiting.cancel()
            finally:
                for proc in controls:
                    proc.kill()  # before the emulator stops: it waits for open watches to end
    finally:
        katyusha.terminate()
