"""Model builders: fully connected nets and ResNets, standard or NTK parameterization."""
