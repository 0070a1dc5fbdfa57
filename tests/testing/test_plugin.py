"""The pytest plugin as a user meets it: test files that pytest runs with the fixtures the
installed entry point provides, and what such a run reports."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
"""What a project with pytest-asyncio sets; without it pytest-asyncio itself warns."""

SEND = """
import smtplib

def send(server, to, subject, body="hello"):
    message = f"From: app@example.com\\r\\nTo: {to}\\r\\nSubject: {subject}\\r\\n\\r\\n{body}\\r\\n"
    with smtplib.SMTP(server.smtp_host, server.smtp_port, timeout=10) as client:
        client.sendmail("app@example.com", [to], message.encode())
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    # the files made here are named test_user_* (and mailsend): a run in this process
    # imports each by its basename, which must not be one of this suite's own
    pytester.makepyfile(mailsend=SEND)
    return pytester


def test_a_test_file_sends_mail_and_waits_for_it_with_the_fixtures_alone(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_user_welcome="""
        from mailsend import send

        def test_welcome_mail_links_to_the_app(mailrunner_server, mailbox):
            send(mailrunner_server, "ada@example.com", "Welcome", "https://app.example/c?t=1")
            email = mailbox.wait_for(to="ada@example.com", subject="Welcome")
            assert email.links() == ["https://app.example/c?t=1"]
            assert [m.id for m in mailbox.messages()] == [email.id]

        def test_a_later_test_sees_none_of_the_mail_before_it(mailbox):
            mailbox.assert_no_messages()
        """
    )

    project.runpytest().assert_outcomes(passed=2)


def test_a_conftest_overrides_the_servers_configuration(project: pytest.Pytester) -> None:
    project.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def mailrunner_config():
            return {"smtp": {"hostname": "mx.conftest.example"}}
        """
    )
    project.makepyfile(
        test_user_banner="""
        import smtplib

        def test_the_server_greets_with_the_configured_name(mailrunner_server):
            with smtplib.SMTP(mailrunner_server.smtp_host, mailrunner_server.smtp_port) as c:
                code, reply = c.ehlo()
            assert reply.decode().startswith("mx.conftest.example")
        """
    )

    project.runpytest().assert_outcomes(passed=1)


def test_a_wait_for_mail_that_never_comes_fails_listing_what_arrived(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_user_reset="""
        from mailsend import send

        def test_reset_mail(mailrunner_server, mailbox):
            send(mailrunner_server, "ada@example.com", "Weekly digest")
            mailbox.wait_for(to="ada@example.com", subject="Reset your password", timeout=0.5)
        """
    )

    result = project.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '*no message matching \'to:"ada@example.com" subject:"Reset your password"\''
            " arrived within 0.5s; what arrived since the test began (1):*",
            "*from app@example.com to ada@example.com subject 'Weekly digest'*",
        ]
    )
    # the traceback ends at the test's own line, not inside the toolkit
    result.stdout.fnmatch_lines(["*mailbox.wait_for(to=*", "E *no message matching*"])
    result.stdout.no_fnmatch_line("*mailrunner/testing/*")


def test_an_async_test_awaits_mail_its_own_loop_sends(project: pytest.Pytester) -> None:
    """The wait runs while the same loop sends with aiosmtplib: a wait that blocked the loop
    would never see the message."""
    project.makepyfile(
        test_user_async="""
        import asyncio
        from email.message import EmailMessage

        import aiosmtplib
        import pytest

        @pytest.mark.asyncio
        async def test_async_signup(mailrunner_server, mailbox):
            waiting = asyncio.create_task(mailbox.await_for(subject="Async hello"))
            message = EmailMessage()
            message["From"], message["To"] = "app@example.com", "ada@example.com"
            message["Subject"] = "Async hello"
            message.set_content("hi")
            await aiosmtplib.send(
                message, hostname=mailrunner_server.smtp_host, port=mailrunner_server.smtp_port
            )
            email = await asyncio.wait_for(waiting, 10)
            assert email.envelope.to == ("ada@example.com",)
        """
    )

    project.runpytest().assert_outcomes(passed=1)


def test_each_xdist_worker_gets_a_server_of_its_own(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_user_workers="""
        import os
        from pathlib import Path

        def test_note_my_server(mailrunner_server, mailbox):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            notes = Path(os.environ["SERVER_NOTES"])
            (notes / worker).write_text(mailrunner_server.api_url)
        """
    )
    notes = project.mkdir("notes")
    monkeypatch.setenv("SERVER_NOTES", str(notes))

    result = project.runpytest_subprocess("-n", "2", "--dist", "each")

    result.assert_outcomes(passed=2)
    urls = {path.name: path.read_text() for path in notes.iterdir()}
    assert sorted(urls) == ["gw0", "gw1"], result.stdout.str()
    assert len(set(urls.values())) == 2, f"the workers shared a server: {urls}"


def test_fault_helpers_act_on_the_next_commands_and_end_with_their_test(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_user_faults="""
        import smtplib

        import pytest

        MESSAGE = b"Subject: x\\r\\n\\r\\ny\\r\\n"

        def connect(server):
            return smtplib.SMTP(server.smtp_host, server.smtp_port, timeout=10)

        def test_refused_then_dropped(mailrunner_server, mailbox):
            mailbox.fail_next(match="full@*", reply="452 4.2.2 Mailbox full", times=5)
            mailbox.disconnect_next(stage="data")
            with connect(mailrunner_server) as client:
                client.ehlo()
                client.mail("app@example.com")
                assert client.rcpt("full@example.com") == (452, b"4.2.2 Mailbox full")
                assert client.rcpt("ok@example.com")[0] == 250
                with pytest.raises(smtplib.SMTPServerDisconnected):
                    client.data(MESSAGE)
            mailbox.assert_no_messages()

        def test_the_rules_of_the_test_before_are_gone(mailrunner_server, mailbox):
            with connect(mailrunner_server) as client:
                client.sendmail("app@example.com", ["full@example.com"], MESSAGE)
            mailbox.wait_for(to="full@example.com")
        """
    )

    project.runpytest().assert_outcomes(passed=2)


def test_the_readmes_password_reset_example_passes_as_written(project: pytest.Pytester) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing your application's email", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    project.makepyfile(test_user_password_reset=example)

    project.runpytest().assert_outcomes(passed=1)
