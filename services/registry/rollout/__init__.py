"""Progressive delivery in the registry (issue 14): ``judgement`` (the pure verdict),
``window`` (the routers' statistics from Redis), ``records`` (keys, audited policy writes,
states that follow the policy), ``controller`` (one fenced actor across replicas),
``service`` (the ``shunter.rollout.v1.Rollouts`` RPCs), ``experiment`` and ``shadow_report``
(the A/B and shadow reports)."""
