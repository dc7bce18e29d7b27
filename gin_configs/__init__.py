"""The experiment configs shipped with lplr_tf, found by bare name by the launcher."""
