DROP TABLE feedback;
DROP TABLE requests;
