// The driver scenario with pgjdbc: Statement, PreparedStatement with
// prepareThreshold=1 (server-prepared from the first execution), manual
// transactions, SQLWarning notices, LISTEN/NOTIFY and CopyManager.
//
// Same contract as the other scenarios: PG* env vars, DRIVER_WORKERS
// concurrent workers x DRIVER_REPS fresh connections, one JSON record per
// line ordered by worker/repetition/step, exit 1 if a worker failed.
import java.io.StringReader;
import java.io.StringWriter;
import java.sql.*;
import java.time.OffsetDateTime;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class Scenario {
    static final String[] ZONES = {"America/New_York", "Asia/Tokyo", "Europe/Paris", "Australia/Adelaide"};

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof String) {
            StringBuilder b = new StringBuilder("\"");
            for (char c : ((String) v).toCharArray()) {
                if (c == '"' || c == '\\') b.append('\\').append(c);
                else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
                else b.append(c);
            }
            return b.append('"').toString();
        }
        if (v instanceof List) {
            StringJoiner j = new StringJoiner(", ", "[", "]");
            for (Object o : (List<?>) v) j.add(json(o));
            return j.toString();
        }
        return v.toString();
    }

    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder("\\x");
        for (byte x : b) s.append(String.format("%02x", x & 0xff));
        return s.toString();
    }

    final int w;
    int rep;
    final List<String> out = new ArrayList<>();

    Scenario(int w) { this.w = w; }

    void rec(String step, Object v) {
        out.add("{\"i\": " + out.size() + ", \"rep\": " + rep + ", \"step\": " + json(step) + ", \"v\": " + json(v) + ", \"w\": " + w + "}");
        System.err.println("progress w" + w + " rep" + rep + " " + step);
    }

    static Object one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getObject(1);
        }
    }

    static List<Object> row(ResultSet r) throws SQLException {
        List<Object> l = new ArrayList<>();
        for (int i = 1; i <= r.getMetaData().getColumnCount(); i++) l.add(r.getString(i));
        return l;
    }

    static final String[] LITERALS = {
        "SELECT 'please discard all of these notes'",
        "SELECT 1 /* deallocate all */",
        "SELECT $$DISCARD ALL$$",
        "SELECT 'listen to this' AS listen_count",
    };

    void run() throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
                + System.getenv("PGDATABASE") + "?prepareThreshold=1&connectTimeout=10";
        String table = "drv_jdbc_w" + w;
        try (Connection c = DriverManager.getConnection(url, System.getenv("PGUSER"), System.getenv("PGPASSWORD"))) {
            rec("tz_initial", one(c, "SHOW TimeZone"));
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 1 AS one, 'hello'::text AS s")) {
                r.next();
                rec("simple", List.of(r.getMetaData().getColumnName(1), r.getMetaData().getColumnName(2), r.getInt(1), r.getString(2)));
            }
            try (PreparedStatement p = c.prepareStatement("SELECT ?::int + 1, ?::text || '!'")) {
                p.setInt(1, 41);
                p.setString(2, "x");
                try (ResultSet r = p.executeQuery()) { r.next(); rec("param", row(r)); }
            }
            List<Object> prepared = new ArrayList<>();
            List<Object> afterLiterals = new ArrayList<>();
            try (PreparedStatement p = c.prepareStatement("SELECT ?::int * 2 AS d")) {
                for (int i = 0; i < 6; i++) {
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) { r.next(); prepared.add(r.getInt(1)); }
                }
                // Texts that name session effects only in literals, comments
                // and aliases: the server-prepared statement must survive them.
                try (Statement s = c.createStatement()) {
                    for (String text : LITERALS) s.execute(text);
                }
                for (int i = 0; i < 3; i++) {
                    p.setInt(1, i);
                    try (ResultSet r = p.executeQuery()) { r.next(); afterLiterals.add(r.getInt(1)); }
                }
            }
            rec("prepared", prepared);
            rec("after_literals", afterLiterals);

            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE IF EXISTS " + table);
                s.execute("CREATE TABLE " + table + " (k int PRIMARY KEY, v text)");
            }
            String count = "SELECT count(*) FROM " + table;
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + table + " VALUES (?, ?)");
                 PreparedStatement cnt = c.prepareStatement(count)) {
                c.setAutoCommit(false);
                ins.setInt(1, 1); ins.setString(2, "one"); ins.executeUpdate();
                try (ResultSet r = cnt.executeQuery()) { r.next(); rec("txn_inside", r.getLong(1)); }
                c.rollback();
                try (ResultSet r = cnt.executeQuery()) { r.next(); rec("txn_rolled_back", r.getLong(1)); }
                ins.setInt(1, 2); ins.setString(2, "two"); ins.executeUpdate();
                ins.setInt(1, 3); ins.setNull(2, Types.VARCHAR); ins.executeUpdate();
                c.commit();
                c.setAutoCommit(true);
            }
            List<Object> rows = new ArrayList<>();
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT k, v FROM " + table + " ORDER BY k")) {
                while (r.next()) rows.add(row(r));
            }
            rec("txn_committed", rows);

            try {
                one(c, "SELECT 1/0");
                rec("error", "no error");
            } catch (SQLException e) {
                rec("error", List.of(e.getSQLState(), e.getMessage()));
            }
            rec("after_error", one(c, "SELECT 2"));
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("INSERT INTO " + table + " VALUES (4, 'four')");
                s.execute("SELECT 1/0");
            } catch (SQLException e) {
                rec("error_in_txn", e.getSQLState());
            }
            try {
                one(c, "SELECT 1");
            } catch (SQLException e) {
                rec("aborted_txn", e.getSQLState());
            }
            c.rollback();
            c.setAutoCommit(true);
            rec("after_error_in_txn", one(c, count));

            try (PreparedStatement p = c.prepareStatement(
                    "SELECT ?::int4, ?::bytea, ?::numeric, ?::timestamptz, ?::jsonb, ?::text, ?::text")) {
                p.setInt(1, 7);
                p.setBytes(2, new byte[] {0, 1, (byte) 0xff, 'a', 'b'});
                p.setBigDecimal(3, new java.math.BigDecimal("12345.678900"));
                p.setObject(4, OffsetDateTime.parse("2024-02-29T13:45:06.123456Z"));
                p.setString(5, "{\"a\": [1, 2, null], \"b\": \"\u00e9\"}");
                p.setNull(6, Types.VARCHAR);
                p.setString(7, "na\u00efve \u2603");
                for (int i = 0; i < 2; i++) {
                    try (ResultSet r = p.executeQuery()) {
                        r.next();
                        rec("types_param", Arrays.asList(r.getInt(1), hex(r.getBytes(2)), r.getBigDecimal(3).toPlainString(),
                                r.getObject(4, OffsetDateTime.class).toString(), r.getString(5), r.getString(6), r.getString(7)));
                    }
                }
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(
                    "SELECT NULL::int, '\\x0102'::bytea, 1.50::numeric, '2024-01-01 00:00:00+00'::timestamptz, "
                    + "'{\"k\": [1, null]}'::json, ARRAY[1, NULL, 3]::int[]")) {
                r.next();
                r.getInt(1);
                boolean wasNull = r.wasNull();
                rec("types_server", Arrays.asList(wasNull, hex(r.getBytes(2)), r.getBigDecimal(3).toPlainString(),
                        r.getObject(4, OffsetDateTime.class).toString(), r.getString(5), r.getString(6)));
            }

            try (Statement s = c.createStatement()) {
                s.execute("SET TimeZone = '" + ZONES[w % ZONES.length] + "'");
            }
            c.setAutoCommit(false);
            rec("tz_later_txn", Arrays.asList(one(c, "SHOW TimeZone"), one(c, "SELECT '2024-06-01 12:00:00+00'::timestamptz::text")));
            c.commit();
            c.setAutoCommit(true);

            try (Statement s = c.createStatement()) {
                s.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$");
                List<Object> notices = new ArrayList<>();
                for (SQLWarning x = s.getWarnings(); x != null; x = x.getNextWarning()) notices.add(x.getMessage());
                rec("notice", notices);
            }

            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            long n = cm.copyIn("COPY " + table + " (k, v) FROM STDIN", new StringReader("10\tten\n11\t\\N\n12\ttab\\there\n"));
            StringWriter sw = new StringWriter();
            cm.copyOut("COPY (SELECT k, v FROM " + table + " WHERE k >= 10 ORDER BY k) TO STDOUT", sw);
            rec("copy", Arrays.asList(n, sw.toString()));

            try (Statement s = c.createStatement()) {
                s.execute("LISTEN ch_jdbc_" + w);
                s.execute("NOTIFY ch_jdbc_" + w + ", 'payload " + rep + "'");
            }
            List<Object> got = new ArrayList<>();
            PGNotification[] ns = c.unwrap(PGConnection.class).getNotifications(5000);
            if (ns != null) for (PGNotification x : ns) got.add(Arrays.asList(x.getName(), x.getParameter()));
            rec("notify", got);
            rec("final", Arrays.asList(one(c, count), one(c, "SHOW TimeZone")));
        }
    }

    public static void main(String[] args) throws Exception {
        int workers = Integer.parseInt(System.getenv().getOrDefault("DRIVER_WORKERS", "4"));
        int reps = Integer.parseInt(System.getenv().getOrDefault("DRIVER_REPS", "3"));
        List<Scenario> all = new ArrayList<>();
        List<Thread> threads = new ArrayList<>();
        for (int w = 0; w < workers; w++) {
            Scenario s = new Scenario(w);
            all.add(s);
            Thread t = new Thread(() -> {
                try {
                    for (s.rep = 0; s.rep < reps; s.rep++) s.run();
                } catch (Exception e) {
                    s.rep = -1;
                    s.rec("FAILED", e.toString());
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) t.join();
        boolean failed = false;
        for (Scenario s : all) {
            for (String line : s.out) {
                failed |= line.contains("\"step\": \"FAILED\"");
                System.out.println(line);
            }
        }
        System.exit(failed ? 1 : 0);
    }
}
