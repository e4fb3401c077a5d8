"""Ray clusters from the user's side: submitting experiments as Ray jobs (`llmlab submit`, `llmlab
jobs`) and a one-machine cluster on loopback for demos and tests (`llmlab cluster up|down`)."""
