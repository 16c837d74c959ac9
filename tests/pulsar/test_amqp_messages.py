"""Queue names and message bodies must match what Pulsar 0.16's own code expects, character for character."""

from __future__ import annotations

import pytest

from tesp_api.pulsar.amqp_messages import (
    CollectedOutput,
    RemoteStaging,
    SetupMessage,
    StagedFile,
)
from tesp_api.pulsar.amqp_names import PulsarQueues


def test_default_manager_uses_pulsar_prefix() -> None:
    assert PulsarQueues.for_manager().setup == "pulsar__setup"
    assert PulsarQueues.for_manager().status_update == "pulsar__status_update"


def test_named_manager_gets_its_own_prefix() -> None:
    assert PulsarQueues.for_manager("gpu").kill == "pulsar_gpu__kill"


def test_amqp_key_prefix_overrides_the_manager_prefix() -> None:
    assert PulsarQueues.for_manager("gpu", amqp_key_prefix="site1_").status == "site1__status"


def test_url_input_carries_both_path_and_source() -> None:
    action = StagedFile("a/b.txt", url="http://h/x").to_setup_action()
    assert action == {
        "name": "a/b.txt",
        "type": "input",
        "action": {
            "action_type": "remote_transfer",
            "path": "a/b.txt",
            "source": {"path": "a/b.txt"},
            "url": "http://h/x",
        },
    }


def test_a_result_copied_on_the_pulsar_host_is_a_remote_copy_action_with_path_and_source() -> None:
    action = StagedFile("tes-restore/tes-meta.tar", copy_from="/p/job/working/tes-meta.tar").to_setup_action()
    assert action == {
        "name": "tes-restore/tes-meta.tar",
        "type": "input",
        "action": {
            "action_type": "remote_copy",
            "path": "/p/job/working/tes-meta.tar",  # Pulsar's from_dict pops it: KeyError without
            "source": {"path": "/p/job/working/tes-meta.tar"},
        },
    }


@pytest.mark.parametrize("source", ["working/tes-meta.tar", "/p/job/../other/secret"])
def test_a_remote_copy_source_must_be_absolute_without_parent_steps(source: str) -> None:
    with pytest.raises(ValueError):
        StagedFile("tes-restore/x", copy_from=source)


def test_inline_input_is_a_message_action() -> None:
    action = StagedFile("job.sh", contents="echo hi", type="config").to_setup_action()
    assert action["action"] == {"action_type": "message", "contents": "echo hi"}


@pytest.mark.parametrize("name", ["", "/abs", "../up", "a/../b", "a//b"])
def test_staged_file_name_must_stay_inside_its_directory(name: str) -> None:
    with pytest.raises(ValueError):
        StagedFile(name, contents="x")


def test_staged_file_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError):
        StagedFile("x", url="http://h/x", contents="x")


@pytest.mark.parametrize("path", ["", "/abs", "../up"])
def test_output_path_must_be_relative_to_the_working_directory(path: str) -> None:
    with pytest.raises(ValueError):
        CollectedOutput("0", path)


def test_outputs_without_files_endpoint_are_refused() -> None:
    with pytest.raises(ValueError):
        RemoteStaging(outputs=[CollectedOutput("0", "out")]).to_dict()


def test_every_work_dir_output_is_also_listed_in_output_files() -> None:
    outputs = RemoteStaging(
        outputs=[CollectedOutput("0", "o"), CollectedOutput("1", "d")], files_endpoint="http://h/f"
    )
    client_outputs = outputs.to_dict()["client_outputs"]
    assert [o for _, o in client_outputs["work_dir_outputs"]] == client_outputs["output_files"] == ["0", "1"]
    assert client_outputs["metadata_directory"] is None


def test_setup_message_asks_pulsar_to_create_the_job_directory() -> None:
    body = SetupMessage(job_id="j", command_line="true").to_body()
    assert body["job_id"] == "j" and body["setup"] is True and body["command_line"] == "true"
