"""katyusha on Kubernetes: the I/O around the core's decisions (docs/kubernetes.md).

- :mod:`.refs`: Services, ports, namespaces and pod names in settings (pure: no client library);
- :mod:`.connect`: an API client from a kubeconfig or the pod's service account;
- :mod:`.discovery`: list and watch a Service's EndpointSlices, emit its pod set
  (decided by katyusha.core.endpoints, subset by katyusha.core.subset);
- :mod:`.source`: ``katyusha serve --discovery kubernetes``, the discovery source
  that feeds those pod sets to each service's membership;
- :mod:`.scale`: read and patch a Deployment's ``scale`` subresource, the KPA actuator;
- :mod:`.leader`: one acting control plane through a ``coordination.k8s.io`` Lease
  (decided by katyusha.core.lease);
- :mod:`.settings`: per-service KPA settings from the objects' annotations
  (decided by katyusha.core.kube_annotations);
- :mod:`.controlplane`, :mod:`.controlapi`, ``python -m katyusha.kubernetes control``:
  the control plane process, its autoscaler loop while leading, and its admin port.

The client library is kubernetes_asyncio, installed by the ``kubernetes``
extra (``pip install 'katyusha[kubernetes]'``); only :mod:`.refs` works without it.
"""
