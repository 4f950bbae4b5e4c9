-- When a call may first have reached the service, and when it was last
-- attempted.
--
-- `doubt_since` is set before an attempt (the attempt may get through, and
-- its answer may never be read) and cleared when the service refused the
-- attempt for sure while no earlier attempt may have got through (an
-- app-wide fault such as 10007, a frequency limit, an expired UserSig). A
-- call in flight without it was never delivered, however old: its jobs
-- start over instead of turning in doubt past the repeat window. The
-- default keeps rows that a worker of an earlier version records in doubt
-- from their start, as that version reads them.
--
-- `attempted_at` keeps a call's `Random` claimed while the call is still
-- being attempted: no call of other content takes it within the repeat
-- window of the latest attempt.
ALTER TABLE calls
    ADD COLUMN IF NOT EXISTS doubt_since  TIMESTAMPTZ DEFAULT now(),
    ADD COLUMN IF NOT EXISTS attempted_at TIMESTAMPTZ;
UPDATE calls SET doubt_since = created_at;
