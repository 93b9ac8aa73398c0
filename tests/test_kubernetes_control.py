"""The Kubernetes control plane end to end: a real katyusha process, the control plane as its own process
(``python -m katyusha.kubernetes control``), and kmock's KubernetesEmulator as the API server.

katyusha's admin address is published as an EndpointSlice of its admin
Service, as Kubernetes would publish a katyusha pod; the control plane finds
it there, takes the Lease, and scales the Deployment from zero when a
request waits at katyusha.
"""

import asyncio
import sys

import aiohttp
import kmock
import yaml

from tests.procs import Proc, script
from tests.test_kubernetes_emulator import SLICES, Emulator, slice_doc, until, write_kubeconfig

LEASE = ("coordination.k8s.io/v1/leases", "demo", "katyusha-control")
DEPLOYMENT = ("apps/v1/deployments", "demo", "hello")


async def test_control_plane_scales_a_deployment_from_zero_on_katyusha_demand(tmp_path):
    katyusha = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0", "--request-timeout", "20"])
    control = None
    try:
        admin_port = int(katyusha.admin.rsplit(":", 1)[1])
        async with Emulator() as cluster, kmock.Server(cluster) as server:
            try:
                for resource in (SLICES, "coordination.k8s.io/v1/leases", "apps/v1/deployments", "v1/services"):
                    cluster.resources[resource] = {}
                cluster.objects[DEPLOYMENT] = {
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "hello", "namespace": "demo",
                                 "annotations": {"autoscaling.knative.dev/initial-scale": "0"}},
                    "spec": {"replicas": 0}, "status": {"replicas": 0},
                }  # fmt: skip
                peers = slice_doc("other-k2j9d")
                peers["metadata"].update(name="katyusha-admin-4bx8w", labels={"kubernetes.io/service-name": "katyusha-admin"})
                peers["endpoints"][0].update(addresses=["127.0.0.1"], targetRef={"kind": "Pod", "name": "katyusha-0"})
                peers["ports"] = [{"name": "admin", "port": admin_port, "protocol": "TCP"}]
                cluster.objects[SLICES, "demo", "katyusha-admin-4bx8w"] = peers
                cluster.objects[SLICES, "demo", "hello-7x2kq"] = slice_doc("hello-7x2kq")

                kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))
                settings = tmp_path / "config-autoscaler.yaml"
                settings.write_text(yaml.safe_dump({"allow-zero-initial-scale": "true", "tick-interval": "0.5s"}))
                control = Proc(
                    [sys.executable, "-m", "katyusha.kubernetes", "control", "--kubeconfig", str(kubeconfig),
                     "--namespace", "demo", "--identity", "control-0", "--katyusha", "katyusha-admin:admin",
                     "--scale", "default=hello:hello", "--config-autoscaler", str(settings),
                     "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.5"],
                    ready_timeout=0,
                )  # fmt: skip
                await until(lambda: holder(cluster) == "control-0", timeout=15, what="the control plane to take the Lease")
                await asyncio.sleep(1.5)  # several ticks with no demand: nothing is scaled
                assert cluster.objects[DEPLOYMENT]["spec"]["replicas"] == 0, control.output

                async with aiohttp.ClientSession() as session:
                    waiting = asyncio.create_task(session.get(katyusha.url + "/hello", timeout=aiohttp.ClientTimeout(30)))
                    await until(lambda: cluster.objects[DEPLOYMENT]["spec"]["replicas"] == 1, timeout=10,
                                what="a scale from zero")  # fmt: skip
                    waiting.cancel()
                patches = [r for r in cluster if r.method == "PATCH" and r.url.path.endswith("/deployments/hello/scale")]
                assert [p.data for p in patches] == [{"spec": {"replicas": 1}}]

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


def holder(cluster):
    try:
        return cluster.objects[LEASE]["spec"]["holderIdentity"]
    except KeyError:
        return None
