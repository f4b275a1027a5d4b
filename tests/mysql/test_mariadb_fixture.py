from urllib.parse import urlsplit

import pytest

from tests.mysql.conftest import connect

pytestmark = pytest.mark.mysql


def test_throwaway_server_answers_with_a_password(mysql_database: str) -> None:
    with connect(mysql_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT 40 + 2, DATABASE()")
        assert cur.fetchone() == (42, urlsplit(mysql_database).path.lstrip("/"))
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO t VALUES (1), (2)")
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (2,)


def test_a_wrong_password_is_refused(mysql_dsn: str) -> None:
    import pymysql

    url = urlsplit(mysql_dsn)
    wrong = mysql_dsn.replace(f":{url.password}@", ":not-the-password@")
    with pytest.raises(pymysql.err.OperationalError) as err:
        connect(wrong)
    assert err.value.args[0] == 1045  # ER_ACCESS_DENIED_ERROR


def test_each_test_gets_its_own_database(mysql_database: str, mysql_dsn: str) -> None:
    with connect(mysql_dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES")
        names = {row[0] for row in cur.fetchall()}
    assert urlsplit(mysql_database).path.lstrip("/") in names
