"""Ranks: starting them (torch's elastic launcher or an outer one), the process group, stop signals.

environment  the one reader of what a launcher (torchrun, deepspeed, srun, mpirun) set; torch-free
launch       `frontier train` starting its own ranks; an outer launcher's ranks checked
distributed  the process group from any launcher's environment; collectives on host values
signals      SIGTERM/SIGINT/SIGUSR1/SIGHUP -> save and exit with code 3
"""
