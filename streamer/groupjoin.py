"""One JoinGroup request per group join: a fix of aiokafka 0.14's consumer, applied by the daemon.

aiokafka 0.14 (the newest release) sends its JoinGroup request inside the loop over the consumer's
assignors (aio-libs/aiokafka PR #1168, open), so a consumer with two assignors, as the daemon's
is (sticky first, round-robin for members that lack it), joins twice at every rebalance:

- first with sticky alone, then with both. A broker checks a member's protocols against the
  group's (Apache Kafka answers INCONSISTENT_GROUP_PROTOCOL, which aiokafka raises as fatal), so
  the first request fails wherever a member lacks sticky: the round-robin fallback the daemon
  lists for a rolling upgrade from a round-robin-only version is never reached;
- the second request changes the member's protocols, which starts another rebalance round: on
  the embedded broker each request waits out the rebalance timeout, so the daemon's first
  prediction waits two session timeouts instead of one (2.0 s against 1.0 s in the demo).

`install()` replaces `CoordinatorGroupRebalance.perform_group_join` with the same method, the
request built once from every assignor. Only the loop moved: the request, the member-id retry
(KIP-394) and the handling of every answer are aiokafka 0.14.0's (Apache License 2.0). It patches
aiokafka 0.14 only (pyproject pins it below 0.15): a later release is read as it is, and the
integration test that counts the daemon's JoinGroup requests says whether it still needs this.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiokafka
import aiokafka.errors as Errors
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.protocol.group import JoinGroupRequest

log = logging.getLogger("aiokafka.consumer.group_coordinator")  # aiokafka's own messages, under its name

PATCHED_SERIES = "0.14."  # the releases whose method this file restates


async def perform_group_join(self: Any) -> tuple[str, bytes] | None:
    """aiokafka 0.14.0's `CoordinatorGroupRebalance.perform_group_join`, its request sent after
    the loop over the assignors instead of inside it."""
    log.info("(Re-)joining group %s", self.group_id)

    topics = self._subscription.topics
    metadata_list = []
    for assignor in self._assignors:
        metadata = assignor.metadata(topics)
        if not isinstance(metadata, bytes):
            metadata = metadata.encode()
        metadata_list.append((assignor.name, metadata))

    try_join = True  # KIP-394: a member without an id is given one and joins again with it
    while try_join:
        try_join = False
        request = JoinGroupRequest(
            self.group_id,
            self._session_timeout_ms,
            self._rebalance_timeout_ms,
            self._coordinator.member_id,
            self._coordinator._group_instance_id,
            ConsumerProtocol.PROTOCOL_TYPE,
            metadata_list,
        )
        log.debug("Sending JoinGroup (%s) to coordinator %s", request, self.coordinator_id)
        try:
            response = await self._coordinator._send_req(request)
        except Errors.KafkaError:
            # a connection error: the coordinator lookup backs off
            return None
        if not self._subscription.active:
            # the subscription changed: ignore the answer and start the join again
            return None
        error_type = Errors.for_code(response.error_code)
        if error_type is Errors.MemberIdRequired:
            self._coordinator.member_id = response.member_id
            try_join = True

    if error_type is Errors.NoError:
        log.debug("Join group response %s", response)
        self._coordinator.member_id = response.member_id
        self._coordinator.generation = response.generation_id
        protocol = response.group_protocol
        log.info("Joined group '%s' (generation %s) with member_id %s", self.group_id, response.generation_id,
                 response.member_id)
        if response.leader_id == response.member_id:
            log.info("Elected group leader -- performing partition assignments using %s", protocol)
            assignment_bytes = await self._on_join_leader(response)
        else:
            assignment_bytes = await self._on_join_follower()
        if assignment_bytes is None:
            return None
        return (protocol, assignment_bytes)
    if error_type is Errors.GroupLoadInProgressError:
        log.debug("Attempt to join group %s rejected since coordinator %s is loading the group.", self.group_id,
                  self.coordinator_id)
        await asyncio.sleep(self._retry_backoff_ms / 1000)
    elif error_type is Errors.UnknownMemberIdError:
        self._coordinator.reset_generation()
        log.debug("Attempt to join group %s failed due to unknown member id", self.group_id)
    elif error_type in (Errors.GroupCoordinatorNotAvailableError, Errors.NotCoordinatorForGroupError):
        err = error_type()
        self._coordinator.coordinator_dead()
        log.debug("Attempt to join group %s failed due to obsolete coordinator information: %s", self.group_id, err)
    elif error_type in (Errors.InconsistentGroupProtocolError, Errors.InvalidSessionTimeoutError,
                        Errors.InvalidGroupIdError):
        err = error_type()
        log.error("Attempt to join group failed due to fatal error: %s", err)
        raise err
    elif error_type is Errors.GroupAuthorizationFailedError:
        raise error_type(self.group_id)
    else:
        err = error_type()
        log.error("Unexpected error in join group '%s' response: %s", self.group_id, err)
        raise Errors.KafkaError(repr(err))
    return None


def install() -> bool:
    """Patch aiokafka's group join where this file restates it (idempotent); True when patched."""
    if not aiokafka.__version__.startswith(PATCHED_SERIES):
        return False
    CoordinatorGroupRebalance.perform_group_join = perform_group_join  # type: ignore[method-assign]
    return True
