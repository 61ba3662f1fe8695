SELECT 1
--@@
SELECT 'it''s; DELETE FROM t' AS s
--@@
SELECT $$ INSERT INTO t VALUES (1) $$
--@@
SELECT $body$ ; UPDATE t SET a = 1; $body$ AS b
--@@
SELECT $a$ $b$ DELETE $b$ $a$
--@@
SELECT E'\' ; DELETE FROM t; --' AS e
--@@
SELECT e'\\' AS backslash, 'x' AS y
--@@
SELECT 'a\' AS plain_backslash
--@@
SELECT 'x\' '; DELETE FROM t; --'
--@@
SELECT /* DELETE FROM t */ 1
--@@
SELECT /* outer /* nested DELETE */ still comment; UPDATE t SET a=1 */ 1
--@@
SELECT 1 -- ; DELETE FROM t
--@@
SELECT "insert", "update", "delete" FROM "into"
--@@
SELECT "for" FROM t
--@@
SELECT a AS "FOR UPDATE" FROM t
--@@
SELECT U&'\0041' AS u, U&"a" FROM t
--@@
SELECT B'101', X'1F', N'nat'
--@@
SELECT a$$b FROM t
--@@
SELECT 1 /* lagrouter:route=primary */
--@@
/* lagrouter:route=replica */ DELETE FROM t
--@@
SELECT 1; DELETE FROM t
--@@
SELECT 1; SELECT 2; SELECT 3
--@@
SELECT 1;;;SELECT 2;
--@@
SELECT 1; /* ; */ SELECT 'a;b'
--@@
BEGIN; SELECT 1; COMMIT
--@@
BEGIN; UPDATE t SET a = 1; COMMIT
--@@
BEGIN READ ONLY; SELECT 1; COMMIT
--@@
BEGIN READ ONLY
--@@
BEGIN
--@@
BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE
--@@
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY
--@@
START TRANSACTION READ ONLY
--@@
START TRANSACTION READ WRITE
--@@
BEGIN; SET TRANSACTION READ ONLY; SELECT 1
--@@
BEGIN; SET TRANSACTION READ WRITE; SELECT 1
--@@
BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1
--@@
COMMIT
--@@
ROLLBACK
--@@
SAVEPOINT a
--@@
BEGIN; SELECT 1; COMMIT AND CHAIN
--@@
BEGIN; SELECT 1; ROLLBACK
--@@
BEGIN; SAVEPOINT s; SELECT 1; RELEASE SAVEPOINT s; COMMIT
--@@
PREPARE TRANSACTION 'x'
--@@
COMMIT PREPARED 'x'
--@@
SET lagrouter.min_lsn = '0/1'; SELECT 1
--@@
SET search_path = app; SELECT 1
--@@
SET default_transaction_read_only = on
--@@
SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY
--@@
RESET ALL
--@@
DISCARD ALL
--@@
SHOW search_path
--@@
SHOW ALL
--@@
SHOW transaction_read_only
--@@
TABLE t
--@@
VALUES (1), (2)
--@@
(SELECT 1) UNION (SELECT 2)
--@@
((SELECT 1))
--@@
SELECT * FROM t FOR UPDATE
--@@
SELECT * FROM t FOR SHARE
--@@
SELECT * FROM t FOR NO KEY UPDATE
--@@
SELECT * FROM t FOR KEY SHARE
--@@
SELECT * FROM t FOR UPDATE OF t NOWAIT
--@@
SELECT * FROM t FOR UPDATE SKIP LOCKED
--@@
SELECT * FROM (SELECT * FROM t FOR UPDATE) s
--@@
SELECT * FROM t WHERE a IN (SELECT a FROM u FOR SHARE)
--@@
WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x
--@@
SELECT * FROM t LIMIT 1 FOR UPDATE
--@@
SELECT substring('abc' FROM 1 FOR 2)
--@@
SELECT overlay('abc' PLACING 'x' FROM 1 FOR 1)
--@@
SELECT * INTO new_t FROM t
--@@
SELECT a INTO TEMP tmp FROM t
--@@
SELECT a INTO UNLOGGED x FROM t
--@@
SELECT 1 INTO t
--@@
SELECT 1INTO t
--@@
WITH x AS (SELECT 1) SELECT * INTO y FROM x
--@@
WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d
--@@
WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM u
--@@
WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i
--@@
WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *) SELECT 1
--@@
WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3), d AS (DELETE FROM t) SELECT * FROM r
--@@
WITH a AS (SELECT 1), b AS (SELECT 2) SELECT * FROM a, b
--@@
WITH a(x, y) AS (SELECT 1, 2) SELECT x FROM a
--@@
WITH a(x) AS MATERIALIZED (SELECT 1), b(y) AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a, b
--@@
WITH a AS (SELECT 1) SELECT * FROM a, my_srf() AS (z int)
--@@
WITH a AS (SELECT 1) SELECT * FROM a, json_to_record('{"z":1}') AS (z int)
--@@
WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x
--@@
WITH x AS (SELECT 1) UPDATE t SET a = 1
--@@
INSERT INTO t VALUES (1)
--@@
INSERT INTO t SELECT * FROM u
--@@
INSERT INTO t VALUES (1) ON CONFLICT (a) DO NOTHING
--@@
UPDATE t SET a = a + 1 WHERE b = 2
--@@
DELETE FROM t WHERE a = 1
--@@
MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)
--@@
TRUNCATE t
--@@
COPY t FROM STDIN
--@@
COPY t TO STDOUT
--@@
COPY (SELECT * FROM t) TO STDOUT
--@@
CALL my_proc(1)
--@@
DO $$ BEGIN PERFORM 1; END $$
--@@
DO LANGUAGE plpgsql $x$ BEGIN DELETE FROM t; END $x$
--@@
LOCK TABLE t IN ACCESS SHARE MODE
--@@
LOCK t
--@@
CREATE TABLE t (a int)
--@@
CREATE TABLE t2 AS SELECT 1
--@@
CREATE MATERIALIZED VIEW mv AS SELECT 1
--@@
REFRESH MATERIALIZED VIEW mv
--@@
DROP TABLE t
--@@
ALTER TABLE t ADD COLUMN b int
--@@
VACUUM t
--@@
ANALYZE t
--@@
GRANT SELECT ON t TO u
--@@
CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END
--@@
PREPARE p AS SELECT 1
--@@
EXECUTE p
--@@
DEALLOCATE p
--@@
DECLARE c CURSOR FOR SELECT 1
--@@
FETCH 1 FROM c
--@@
CLOSE c
--@@
LISTEN ch
--@@
NOTIFY ch
--@@
UNLISTEN *
--@@
CHECKPOINT
--@@
REINDEX TABLE t
--@@
CLUSTER t
--@@
SECURITY LABEL ON TABLE t IS 'x'
--@@
COMMENT ON TABLE t IS 'x'
--@@
EXPLAIN SELECT * FROM t
--@@
EXPLAIN VERBOSE SELECT * FROM t
--@@
EXPLAIN (COSTS OFF) SELECT * FROM t
--@@
EXPLAIN INSERT INTO t VALUES (1)
--@@
EXPLAIN DELETE FROM t
--@@
EXPLAIN ANALYZE SELECT * FROM t
--@@
EXPLAIN ANALYZE INSERT INTO t VALUES (1)
--@@
EXPLAIN ANALYZE DELETE FROM t
--@@
EXPLAIN ANALYSE UPDATE t SET a = 1
--@@
EXPLAIN (ANALYZE) UPDATE t SET a = 1
--@@
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) DELETE FROM t
--@@
EXPLAIN (ANALYZE false) DELETE FROM t
--@@
EXPLAIN ANALYZE SELECT nextval('s')
--@@
EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE
--@@
EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d
--@@
EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1
--@@
EXPLAIN CREATE TABLE x AS SELECT 1
--@@
EXPLAIN EXECUTE p
--@@
SELECT nextval('s')
--@@
SELECT currval('s')
--@@
SELECT setval('s', 10)
--@@
SELECT lastval()
--@@
SELECT pg_advisory_lock(1)
--@@
SELECT pg_try_advisory_lock(1)
--@@
SELECT pg_advisory_xact_lock(1)
--@@
SELECT pg_advisory_unlock_all()
--@@
SELECT set_config('search_path', 'x', false)
--@@
SELECT pg_notify('ch', 'x')
--@@
SELECT txid_current()
--@@
SELECT pg_current_wal_lsn()
--@@
SELECT pg_sleep(1)
--@@
SELECT pg_terminate_backend(1)
--@@
SELECT lo_unlink(1)
--@@
SELECT gen_random_uuid()
--@@
SELECT random()
--@@
SELECT clock_timestamp()
--@@
SELECT my_func()
--@@
SELECT app.my_func(1)
--@@
SELECT "MyFunc"(1)
--@@
SELECT "my""func"(1)
--@@
SELECT public.lower('a')
--@@
SELECT pg_catalog.lower('a')
--@@
SELECT pg_catalog.nextval('s')
--@@
SELECT * FROM my_srf()
--@@
SELECT * FROM generate_series(1, 10) g
--@@
SELECT * FROM generate_series(1, 10) AS g(n)
--@@
SELECT * FROM unnest(ARRAY[1,2]) WITH ORDINALITY AS u(x, i)
--@@
SELECT * FROM ROWS FROM (generate_series(1,2), my_srf()) AS r
--@@
SELECT * FROM t, LATERAL my_srf(t.a) s
--@@
SELECT * FROM t JOIN LATERAL (SELECT nextval('s')) x ON true
--@@
SELECT * FROM t x(a)
--@@
SELECT count(*) FROM t
--@@
SELECT count(*) FILTER (WHERE a > 0) FROM t
--@@
SELECT sum(a) OVER (PARTITION BY b ORDER BY c ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t
--@@
SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY b)
--@@
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a) FROM t
--@@
SELECT array_agg(a ORDER BY b) FROM t
--@@
SELECT string_agg(DISTINCT a, ',') FROM t
--@@
SELECT a FROM t GROUP BY GROUPING SETS ((a), ())
--@@
SELECT a FROM t GROUP BY ROLLUP (a)
--@@
SELECT a FROM t GROUP BY CUBE (a, b)
--@@
SELECT a FROM t ORDER BY (a) DESC NULLS LAST
--@@
SELECT a FROM t ORDER BY a FETCH FIRST 5 ROWS ONLY
--@@
SELECT a FROM t ORDER BY a FETCH FIRST 5 ROWS WITH TIES
--@@
SELECT a FROM t OFFSET 5 LIMIT 10
--@@
SELECT DISTINCT ON (a) a, b FROM t
--@@
SELECT * FROM t TABLESAMPLE SYSTEM (10)
--@@
SELECT * FROM t TABLESAMPLE BERNOULLI (10) REPEATABLE (42)
--@@
SELECT CAST(a AS numeric(10, 2)) FROM t
--@@
SELECT a::varchar(10), b::timestamp(3), c::character varying(5), d::bit varying(3) FROM t
--@@
SELECT '2020-01-01'::date, interval '1 day', timestamp '2020-01-01'
--@@
SELECT now() AT TIME ZONE 'UTC'
--@@
SELECT extract(epoch FROM now())
--@@
SELECT position('a' IN 'abc'), trim(both 'x' FROM 'xax'), overlay('abc' placing 'z' from 2)
--@@
SELECT coalesce(a, 1), nullif(a, 1), greatest(a, 1), least(a, 1) FROM t
--@@
SELECT EXISTS (SELECT 1 FROM t)
--@@
SELECT a FROM t WHERE a = ANY (ARRAY[1, 2])
--@@
SELECT a FROM t WHERE a = ANY (SELECT b FROM u)
--@@
SELECT a FROM t WHERE (a, b) IN (SELECT 1, 2)
--@@
SELECT ROW(1, 2) = ROW(1, 2)
--@@
SELECT ARRAY(SELECT 1)
--@@
SELECT CASE WHEN a > 1 THEN (SELECT 1) ELSE lower('x') END FROM t
--@@
SELECT a FROM t WHERE b LIKE ('a%')
--@@
SELECT a FROM t WHERE b ILIKE ('a%') AND c SIMILAR TO ('x')
--@@
SELECT (1, 2) OVERLAPS (3, 4)
--@@
SELECT * FROM a JOIN (b JOIN c ON b.id = c.id) ON a.id = b.id
--@@
SELECT * FROM a NATURAL JOIN (SELECT 1 AS id) s
--@@
SELECT * FROM a CROSS JOIN (SELECT 1) s
--@@
SELECT * FROM a LEFT OUTER JOIN (SELECT 1) s ON true
--@@
SELECT * FROM a FULL JOIN (SELECT 1) s ON true
--@@
SELECT left('abc', 2), right('abc', 1)
--@@
SELECT "left"('abc', 2)
--@@
SELECT current_schema(), current_database(), version()
--@@
SELECT current_timestamp, current_date, localtime(2), current_user, session_user
--@@
SELECT j->>'a', j->'b', j#>'{c}', j @> '{}', j ? 'k' FROM t
--@@
SELECT a || b, a ~ 'x', a !~* 'y', a <-> b FROM t
--@@
SELECT a === b FROM t
--@@
SELECT a +++ b FROM t
--@@
SELECT OPERATOR(pg_catalog.+)(1, 2)
--@@
SELECT 1 OPERATOR(pg_catalog.+) 2
--@@
SELECT a=-1 FROM t
--@@
SELECT a<>-1 FROM t
--@@
SELECT -1, +1, 2*-3, 10 % 3, 2 ^ 3, |/ 9
--@@
SELECT $1, $2::int
--@@
SELECT ?
--@@
SELECT json_build_object('a', 1), jsonb_set('{}', '{a}', '1')
--@@
SELECT to_char(now(), 'YYYY'), date_trunc('day', now())
--@@
SELECT xmlelement(name foo, 'x')
--@@
SELECT json_object('a' VALUE 1)
--@@
SELECT * FROM json_table('[1]', '$[*]' COLUMNS (a int PATH '$'))
--@@
SELECT * FROM t WHERE a = (SELECT max(a) FROM t)
--@@
SELECT * FROM t WHERE a = (SELECT my_func())
--@@
SELECT (SELECT nextval('s'))
--@@
SELECT 1 WHERE false OR nextval('s') > 0
--@@
SELECT 1 FROM t HAVING count(*) > my_func()
--@@
SELECT 1 FROM t ORDER BY my_func()
--@@
SELECT 1 FROM t GROUP BY my_func(a)
--@@
SELECT a FROM t LIMIT my_func()
--@@
VALUES (nextval('s'))
--@@
VALUES (lower('A'))
--@@
SELECT * FROM t WHERE a IN (VALUES (1), (2))
--@@
SELECT 1 UNION SELECT nextval('s')
--@@
SELECT 1 EXCEPT SELECT 2
--@@
SELECT 1 INTERSECT SELECT 2
--@@
SELECT * FROM (VALUES (1, 'a')) AS v(id, name)
--@@
SELECT v.* FROM (VALUES (1)) v
--@@
SELECT t.* FROM t
--@@
SELECT (t).a FROM t
--@@
SELECT a[1], a[1:2] FROM t
--@@
SELECT 'SELECT 1 FOR UPDATE'
--@@
SELECT 1 AS "INTO"
--@@
SELECT 1 AS update
--@@
SELECT update FROM t
--@@
SELECT * FROM update
--@@
SELECT *
FROM t
WHERE a = 1
  AND b = 'multi
line'
--@@
	SELECT	1	
--@@
select lower('X'), LOWER('y'), LoWeR('z')
--@@
SELECT 1 /*unterminated
--@@
SELECT 'unterminated
--@@
SELECT "unterminated
--@@
SELECT $q$ unterminated
--@@
SELECT $ 1
--@@
SELECT \ 1
--@@

--@@
   
--@@
;
--@@
-- only a comment
--@@
/* only a block comment */
--@@
SELECT ((((1))))
--@@
SELECT (((
--@@
SELEC 1
--@@
SELECT FROM
--@@
SELECT * FROM t WHERE a = 'x' FOR UPDATE
--@@
SELECT * FROM t WHERE a = 'x'FOR UPDATE
--@@
SELECT * FROM t WHERE a = 1FOR UPDATE
--@@
SELECT * FROM t WHERE a = "x"FOR UPDATE
--@@
SELECT * FROM t/**/FOR/**/UPDATE
--@@
SELECT * FROM t FOR
UPDATE
--@@
SELECT * FROM t FOR -- c
UPDATE
--@@
SELECT 1 INTO/**/t
--@@
SELECT nextval/**/('s')
--@@
SELECT nextval ('s')
--@@
SELECT "nextval"('s')
--@@
SELECT pg_catalog . nextval('s')
--@@
SELECT my_schema."my_func"()
--@@
SELECT a.b.c()
--@@
SELECT my_func
--@@
SELECT 1 FROM t WHERE my_func IS NULL
--@@
SELECT 1 FROM t AS x(y)
--@@
SELECT count(*) AS f(x) FROM t
--@@
SELECT * FROM t t1 JOIN t t2 USING (id)
--@@
SELECT a FROM t WHERE a BETWEEN SYMMETRIC (1) AND (2)
--@@
SELECT a IS DISTINCT FROM (1) FROM t
--@@
SELECT COLLATION FOR ('a')
--@@
SELECT a COLLATE "C" FROM t
--@@
SELECT normalize('a'), 'a' IS NFC NORMALIZED
--@@
SELECT treat(a AS int) FROM t
