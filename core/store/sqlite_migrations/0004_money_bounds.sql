-- The bounds of core.money, held by the schema: no write grows a user's used or credits, or a
-- tenant's used, past COUNTER_MAX (10^18 nano-dollars, $1,000,000,000). The store refuses such
-- a write first, with its reason (422 amount_out_of_range); these triggers hold the bound
-- whatever writes. A counter already past it may still shrink (a reset zeroes it).

CREATE TRIGGER users_counters_bounded BEFORE UPDATE OF used, credits ON users
WHEN (NEW.used > 1000000000000000000 AND NEW.used > OLD.used)
  OR (NEW.credits > 1000000000000000000 AND NEW.credits > OLD.credits)
BEGIN SELECT RAISE(ABORT, 'a user''s used and credits must not grow past COUNTER_MAX'); END;

CREATE TRIGGER tenants_used_bounded BEFORE UPDATE OF used ON tenants
WHEN NEW.used > 1000000000000000000 AND NEW.used > OLD.used
BEGIN SELECT RAISE(ABORT, 'a tenant''s used must not grow past COUNTER_MAX'); END;
