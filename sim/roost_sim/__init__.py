"""Running Roost on one machine: the embedded database, credentials bootstrap, the process
supervisor behind ``make run``, and (later) the simulated fleet."""
