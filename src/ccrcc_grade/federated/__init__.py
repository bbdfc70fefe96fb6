"""Federated training across centres on Flower: sites keep their images, only model weights and
aggregate numbers travel (``client``); the server aggregates (FedAvg/FedProx), selects the best
round on the sites' validation scores and writes a normal run folder (``server``); ``run`` is the
`federated` command (simulated sites on one machine, or a server and hospitals across machines);
``compare`` scores federated vs centralised vs each site alone on the same test patients.
"""
