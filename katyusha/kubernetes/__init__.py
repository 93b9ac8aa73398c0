"""katyusha on Kubernetes: the I/O around the core's decisions (docs/kubernetes.md).

- :mod:`.connect`: an API client from the pod's service account or a kubeconfig;
- :mod:`.discovery`: list and watch a Service's EndpointSlices, emit its pod set
  (decided by katyusha.core.endpoints, subset by katyusha.core.subset);
- :mod:`.scale`: read and patch a Deployment's ``scale`` subresource, the KPA actuator;
- :mod:`.leader`: one acting control plane through a ``coordination.k8s.io`` Lease
  (decided by katyusha.core.lease);
- :mod:`.settings`: per-service KPA settings from the objects' annotations
  (decided by katyusha.core.kube_annotations).

The client library is kubernetes_asyncio, installed by the ``kubernetes``
extra (``pip install 'katyusha[kubernetes]'``).
"""
