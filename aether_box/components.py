"""The components one box runs, in start order ("module:Class", built as Class(box)).

Each component has a `name` and `async def serve(self, *, task_status)`; it registers its
bus services, calls `task_status.started()`, then runs (or returns) until cancelled.
Add a capability by adding its line here.
"""

COMPONENTS: list[str] = [
    "aether_box.status:StatusComponent",
    "aether_box.echo:EchoComponent",
    "aether_box.memory.service:MemoryComponent",
    "aether_box.engines.services:EnginesComponent",
    "aether_box.align.service:AlignComponent",
    "aether_box.sessions.service:SessionsComponent",
    "aether_box.router.service:RouterComponent",
    "aether_box.federation.service:FederationComponent",
    "aether_box.monitor.metrics:MetricsComponent",
    "aether_box.monitor.observer:ObserverComponent",
]
