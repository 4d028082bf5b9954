"""The built-in plugins, by the name ``use`` gives them (``-`` and ``_`` are the same)."""

BUILTINS: dict[str, str] = {
    "tracking_plan": "relay.plugins.builtin.tracking_plan:TrackingPlan",
    "filter": "relay.plugins.builtin.filter:Filter",
    "consent": "relay.plugins.builtin.consent:Consent",
    "privacy": "relay.plugins.builtin.privacy:Privacy",
    "user_agent": "relay.plugins.builtin.user_agent:UserAgent",
    "rename": "relay.plugins.builtin.rename:Rename",
}
