"""CPU training warns, with the launch flag to use, when `accelerate launch` left it fewer threads than cores."""

import os

import pytest
import torch

from training.precision import cpu_thread_warning

CPU = torch.device("cpu")


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_one_thread_on_four_cores_warns_with_the_launch_flag(four_cores, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    warning = cpu_thread_warning(CPU)
    assert "1 thread(s)" in warning and "--num_cpu_threads_per_process 4" in warning


def test_each_of_several_local_processes_is_owed_its_share_of_the_cores(four_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert "--num_cpu_threads_per_process 2" in cpu_thread_warning(CPU)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert cpu_thread_warning(CPU) is None


def test_no_warning_when_every_core_is_used_or_off_the_cpu(four_cores, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert cpu_thread_warning(CPU) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert cpu_thread_warning(torch.device("cuda", 0)) is None
